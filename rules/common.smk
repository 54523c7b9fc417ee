import json
import shlex
import sys
from functools import cache
from pathlib import Path, PurePosixPath
from types import SimpleNamespace

sys.path.insert(0, workflow.basedir)

from prism.core.closure import code_fingerprint, stage_roots  # noqa: E402
from prism.core.config import TRAINED_ABLATIONS, ConfigError, load_config  # noqa: E402

try:
    CFG = load_config(config)
except ConfigError as err:
    sys.exit(f"prism-pipeline: {err}")
for warning in CFG.warnings():
    print(f"prism-pipeline: warning: {warning}", file=sys.stderr)

RESULTS = CFG.paths.results
INPUTS = CFG.paths.hf_cache
WORK = CFG.paths.work
POLICIES = [p.name for p in CFG.policies]
MANIFEST = "manifest.json"


# When cores or job slots run short (the tiny run on 2 cores, a capped --jobs), Snakemake starts the ready
# job of highest priority first. The longest chain to the table is a policy's SFT, then its alignment, RL
# and evaluation, so what feeds it starts first, the discriminator's chain beside it, the evaluations last.
PRIORITY = {
    "sft": 8,
    "discriminator": 7,
    "align": 6,
    "rl": 5,
    "benchmarks": 3,
    "evaluate": 2,
}


def input_priority(wildcards) -> int:
    """A base model or training set starts just before the stage that reads it."""
    if "dataset" in wildcards.keys():
        reader = {"sft": "sft", "warmup": "discriminator"}.get(
            wildcards.dataset, wildcards.dataset
        )
    else:
        policy_models = {policy.model for policy in CFG.policies}
        reader = "sft" if wildcards.model in policy_models else "discriminator"
    return PRIORITY[reader] + 1


def as_arg(payload) -> str:
    """A config slice as one shell-quoted JSON argument (also what the params trigger compares)."""
    return shlex.quote(json.dumps(payload, sort_keys=True))


def work_dir(*parts) -> str:
    """Resumable state of one job: outside every declared output, so Snakemake never deletes it."""
    return str(Path(WORK, *parts))


@cache
def code(package: str, engine: str | None = None) -> str:
    """What `python -m prism.<package>` runs for `engine`: the fingerprint of its import closure
    without docstrings (prism/core/closure.py). A params value, so a comment or a module nothing
    imports reruns nothing, and a behaviour edit reruns the jobs whose closure holds it.
    """
    return code_fingerprint(stage_roots(f"prism.{package}", engine))


def built_code(spec: dict) -> str:
    """A download depends on no project code; a tiny or synthetic artifact on the code that builds it."""
    return "" if spec["source"] == "hf" else code("data")


def not_compared(value: str):
    """A param the params trigger skips (it compares no param derived from a job's resources): for
    where a job runs or when it fails, never its result (allocation, failure thresholds).
    """
    return lambda wildcards, resources: value


def tracking_arg():
    """The live-curve settings every training job logs with, and the work root its run name is taken
    from; not compared, so watching a run differently reruns nothing.
    """
    return not_compared(as_arg(CFG.tracking.model_dump() | {"work_root": WORK}))


def env(engine: str) -> str:
    """The pinned environment of a stage's engine (cpu engines share the workflow's own)."""
    return {
        "cpu": "../envs/workflow.yaml",
        "accelerate": "../envs/discriminator.yaml",
        "llamafactory": "../envs/llamafactory.yaml",
        "verl": "../envs/verl.yaml",
        "lmms_eval": "../envs/lmms-eval.yaml",
    }[engine]


def warmup_launcher() -> str:
    """`python` for one CPU process; `accelerate launch` with DeepSpeed ZeRO-2 over the job's GPUs."""
    from prism.discriminator.accelerated import launch_command

    warmup = CFG.discriminator.warmup
    if warmup.engine == "cpu":
        return "python"
    return launch_command(warmup.resources.gpus, warmup.grad_accum)


def warmup_config(architecture: str, sees_images: bool = True) -> str:
    """The warmup job's slice: the moe discriminator of the recipe, or an ablation's dense or text-only one."""
    return as_arg(
        {
            "architecture": architecture,
            "sees_images": sees_images,
            "value_head_dropout": CFG.discriminator.value_head_dropout,
            "warmup": CFG.discriminator.warmup.model_dump(exclude={"resources"}),
        }
    )


def ray_launcher(stage) -> str:
    """A verl stage runs on a Ray cluster over its job's nodes; the CPU engine is a plain process."""
    if stage.engine == "cpu":
        return ""
    per_node = stage.resources.gpus // stage.resources.nodes
    return (
        f"python -m prism.cluster.ray_cluster --nodes {stage.resources.nodes}"
        f" --cpus-per-node {stage.resources.cpus_per_task}"
        f" --gpus-per-node {per_node} --"
    )


def allocation(resources) -> str:
    """The job's shape as stage arguments (verl's trainer.nnodes and n_gpus_per_node)."""
    return (
        f"--nodes {resources.nodes} --gpus-per-node {resources.gpus // resources.nodes}"
    )


def cpu_resources(resources) -> dict:
    """Slurm executor resources of a CPU job (on the cluster's default partition)."""
    slurm = {
        "mem_mb": resources.mem_mb,
        "runtime": round(resources.hours * 60),
        "cpus_per_task": resources.cpus_per_task,
    }
    return slurm | (
        {"slurm_account": CFG.cluster.account} if CFG.cluster.account else {}
    )


def gpu_resources(resources) -> dict:
    """Slurm executor resources of a GPU stage: --gpus for one node; per-node gres + srun for several."""
    slurm = {
        "mem_mb": resources.mem_mb,
        "runtime": round(resources.hours * 60),
        "cpus_per_task": resources.cpus_per_task,
    }
    if CFG.cluster.partition:
        slurm["slurm_partition"] = CFG.cluster.partition
    if CFG.cluster.account:
        slurm["slurm_account"] = CFG.cluster.account
    if resources.gpus == 0:  # a CPU job, such as the upcycle
        return slurm
    if resources.nodes == 1:
        return {**slurm, "gpu": resources.gpus, "gpu_model": CFG.cluster.gpu_model}
    per_node = resources.gpus // resources.nodes
    return {
        **slurm,
        "nodes": resources.nodes,
        "tasks": resources.nodes,
        "tasks_per_gpu": 0,
        "mpi": "srun",
        "gres": f"gpu:{CFG.cluster.gpu_model}:{per_node}",
    }


def released_slug(repo: str) -> str:
    return "--".join(PurePosixPath(repo).parts)


RELEASED = {
    released_slug(repo): repo
    for repo in [
        *CFG.sft.released.values(),
        CFG.discriminator.released,
        *CFG.align.released.values(),
        *(r for variants in CFG.rl.released.values() for r in variants.values()),
    ]
    if repo
}


def released(repo: str) -> str:
    return f"{INPUTS}/released/{released_slug(repo)}/{MANIFEST}"


def base_model(name: str) -> str:
    return f"{INPUTS}/models/{name}/{MANIFEST}"


def prepare_spec(dataset: str) -> dict:
    """The align set's teachers are length-checked with every policy's tokenizer (method-reference B6)."""
    if dataset != "align":
        return {}
    tokenizers = [f"{INPUTS}/models/{policy.model}" for policy in CFG.policies]
    return {
        "teacher_tokens": {
            "max_tokens": CFG.align.max_response_length,
            "tokenizer_dirs": sorted(set(tokenizers)),
        }
    }


def tokenizer_manifests(spec: dict) -> list[str]:
    dirs = spec.get("teacher_tokens", {}).get("tokenizer_dirs", [])
    return [f"{path}/{MANIFEST}" for path in dirs]


def sft_checkpoint(policy: str) -> str:
    if CFG.sft.source == "released":
        return released(CFG.sft.released[policy])
    return f"{RESULTS}/models/sft/{policy}/{MANIFEST}"


def discriminator_checkpoint() -> str:
    if CFG.discriminator.source == "released":
        return released(CFG.discriminator.released)
    return f"{RESULTS}/models/discriminator/warm/{MANIFEST}"


def prism_checkpoint(policy: str) -> str:
    if CFG.align.source == "released":
        return released(CFG.align.released[policy])
    return f"{RESULTS}/models/prism/{policy}/{MANIFEST}"


def init_checkpoint(policy: str, init: str) -> str:
    return sft_checkpoint(policy) if init == "sft" else prism_checkpoint(policy)


def rl_checkpoint(policy: str, init: str, algo: str) -> str:
    repo = CFG.rl.released.get(policy, {}).get(f"{init}-{algo}")
    if CFG.rl.source == "released" and repo:
        return released(repo)
    return f"{RESULTS}/models/rl/{policy}/{init}-{algo}/{MANIFEST}"


# The discriminators that ablations warm instead of the recipe's.
ABLATION_DISCRIMINATORS = {
    "dense_discriminator": f"{RESULTS}/models/discriminator/dense/{MANIFEST}",
    "text_only_discriminator": f"{RESULTS}/models/discriminator/text-only/{MANIFEST}",
}


def subset_sft_checkpoint(policy: str) -> str:
    return f"{RESULTS}/models/ablations/sft_subset/{policy}/sft/{MANIFEST}"


def ablation_start(wildcards) -> str:
    """Where an ablation's alignment starts: the base model without SFT, the SFT on a subset, else the
    recipe's SFT checkpoint."""
    if wildcards.ablation == "no_sft":
        return base_model(CFG.policy(wildcards.policy).model)
    if wildcards.ablation == "sft_subset":
        return subset_sft_checkpoint(wildcards.policy)
    return sft_checkpoint(wildcards.policy)


def ablation_discriminator(wildcards) -> str:
    return ABLATION_DISCRIMINATORS.get(wildcards.ablation, discriminator_checkpoint())


def variant_checkpoint(wildcards) -> str:
    """The model a table row evaluates: base, SFT, aligned, one RL run, or an ablation's RL run."""
    policy, variant = wildcards.policy, wildcards.variant
    if variant.startswith("ablation-"):
        ablation = variant.removeprefix("ablation-")
        return f"{RESULTS}/models/ablations/{ablation}/{policy}/prism-{CFG.ablations.algorithm}/{MANIFEST}"
    if variant == "instruct":
        return base_model(CFG.policy(policy).model)
    if variant == "sft":
        return sft_checkpoint(policy)
    if variant == "prism":
        return prism_checkpoint(policy)
    init, algo = variant.split("-")
    return rl_checkpoint(policy, init, algo)


def trained_runs() -> list[str]:
    """Manifests of the models this configuration trains for its main table: their curves go in the
    report. The ablation chains have their own target, so the main table never waits on
    them."""
    built = {
        variant_checkpoint(SimpleNamespace(policy=policy, variant=variant))
        for policy in POLICIES
        for variant in CFG.eval.variants
        if variant != "instruct"
    }
    if any(variant.startswith("prism") for variant in CFG.eval.variants):
        built |= {prism_checkpoint(policy) for policy in POLICIES} | {
            discriminator_checkpoint()
        }
    return sorted(path for path in built if not path.startswith(f"{INPUTS}/released/"))


def ablation_rows() -> list[tuple[str, str]]:
    """(paper label, evaluation variant) of the ablation table; empty when no ablation is configured."""
    return CFG.ablations.rows() if CFG.ablations and CFG.ablations.settings else []


def rl_slice(algo: str) -> str:
    return as_arg(CFG.rl.job_slice(algo))


BENCHMARK_CACHE = f"{INPUTS}/benchmarks/{MANIFEST}"


def evaluation_inputs(wildcards) -> dict:
    """The model, and what its engine reads beside it: the synthetic sets (cpu), or the judge and the
    benchmarks' data sets fetched for lmms-eval (lmms_eval); the judge only for a benchmark that
    uses one."""
    inputs = {"model": variant_checkpoint(wildcards)}
    if CFG.eval.engine == "cpu":
        inputs["data"] = f"{RESULTS}/data/bench/{MANIFEST}"
    else:
        if CFG.eval.needs_judge([wildcards.benchmark]):
            inputs["judge"] = base_model(CFG.eval.judge.model)
        inputs["benchmarks"] = BENCHMARK_CACHE
    return inputs
