"""The pipeline's one config, as typed models: validated on load, sliced per rule.

Unknown keys, wrong types and unknown names are refused with a message that names the key and what is
allowed; `ConfigError` carries every problem at once.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Algorithm = Literal["grpo", "dapo", "gspo"]
Init = Literal["sft", "prism"]
Source = Literal["build", "released"]
PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]

# Benchmark name -> its column in the paper's tables (the task and metric measuring it: eval.scoring).
BENCHMARKS: dict[str, str] = {
    "mathvista": "MathVista",
    "mathverse": "MathVerse",
    "mathvision": "MathVision",
    "wemath": "WeMath",
    "mmmu": "MMMU",
    "mmmu_pro": "MMMU-Pro",
    "hallusionbench": "HallusionBench",
}
Benchmark = Literal[tuple(BENCHMARKS)]  # type: ignore[valid-type]


def parse_slice(text: str) -> dict:
    """A rule's config slice, as Snakemake passes it on the command line (JSON)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        sys.exit(f"--config is not valid JSON: {err}")


class ConfigError(ValueError):
    """A config that cannot run; the message lists every problem, one per line."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(Strict):
    """What one job of a stage asks Slurm for; `hours` is also the plan's GPU-hour estimate."""

    gpus: Annotated[int, Field(ge=0)]
    nodes: PositiveInt = 1
    hours: PositiveFloat
    mem_mb: PositiveInt
    cpus_per_task: PositiveInt


class CpuResources(Strict):
    """What one CPU job asks Slurm for (no GPU, on the default partition)."""

    hours: PositiveFloat
    mem_mb: PositiveInt
    cpus_per_task: PositiveInt


class DiskEstimate(Strict):
    """GB a full run writes under each path; `prism preflight` compares them with the free space."""

    results: Annotated[float, Field(ge=0)] = 0
    work: Annotated[float, Field(ge=0)] = 0
    hf_cache: Annotated[float, Field(ge=0)] = 0


class Paths(Strict):
    results: str = "results"
    work: str = "work"
    hf_cache: str = "cache/huggingface"
    disk_gb: DiskEstimate = DiskEstimate()


class Cluster(Strict):
    partition: str = ""
    account: str = ""
    gpu_model: str = "h100"
    gpus_per_node: PositiveInt = 8
    gpu_memory_gb: PositiveFloat = 80  # each GPU's memory in GiB: what `prism plan` checks each stage against


class HfSource(Strict):
    repo: str
    revision: str = "main"
    files: list[str] = []
    extra_repos: list[str] = []
    gated: bool = False  # needs an accepted licence and a token: `prism preflight` checks one is there


class TinyModel(Strict):
    hidden_size: PositiveInt = 64
    intermediate_size: PositiveInt = 160
    num_hidden_layers: PositiveInt = 2
    num_attention_heads: PositiveInt = 4
    seed: int = 0

    @model_validator(mode="after")
    def _shapes(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        if self.intermediate_size in (self.hidden_size, 2 * self.hidden_size):
            # transformers tells expert layouts apart by shape (tiny-mode-reference §2)
            raise ValueError("intermediate_size must differ from hidden_size and 2*hidden_size")
        return self


class Sourced(Strict):
    """An input fetched or built from the block its `source` names."""

    @model_validator(mode="after")
    def _source_block(self):
        if getattr(self, self.source) is None:
            raise ValueError(f"source is {self.source!r} but the {self.source!r} block is missing")
        return self

    def selected(self) -> dict:
        """The source and its own block only: what the fetch or build depends on (not whether it is gated)."""
        return {"source": self.source, self.source: getattr(self, self.source).model_dump(exclude={"gated"})}


class Model(Sourced):
    source: Literal["hf", "tiny"]
    hf: HfSource | None = None
    tiny: TinyModel | None = None


class Policy(Strict):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.-]*$")]
    model: str
    paper_name: str = ""


class Synthetic(Strict):
    examples: PositiveInt
    seed: int = 0


class SyntheticInParts(Synthetic):
    # built in these folders, the examples split evenly, as a set fetched from several repos is laid out
    parts: list[str] = []


class Dataset(Sourced):
    source: Literal["hf", "synthetic"]
    hf: HfSource | None = None
    synthetic: Synthetic | None = None


class SftDataset(Dataset):
    synthetic: SyntheticInParts | None = None

    def parts(self) -> list[str]:
        """The folders the set comes in, one per repo (none when it is one repo)."""
        if self.source == "synthetic":
            return self.synthetic.parts
        repos = [self.hf.repo, *self.hf.extra_repos]
        return [repo.split("/")[-1] for repo in repos] if len(repos) > 1 else []


class Data(Strict):
    sft: SftDataset
    warmup: Dataset
    align: Dataset
    rl: Dataset
    # Preparation stops when it would leave out more than this fraction of a set: a format mismatch.
    max_rejected_fraction: Fraction = 0.02
    resources: CpuResources  # of each prepare job: a Slurm CPU job, not the login node


class EpochTraining(Strict):
    """Supervised-style training over a data set: what SFT and the discriminator warmup share."""

    lr: PositiveFloat
    scheduler: Literal["cosine", "constant"] = "cosine"
    warmup_ratio: Fraction
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    epochs: PositiveInt
    batch_size: PositiveInt
    grad_accum: PositiveInt = 1
    max_length: PositiveInt
    seed: int = 42
    resources: Resources


class LlamaFactorySettings(Strict):
    """How the LLaMA-Factory engine reads images, spends the GPUs and saves checkpoints."""

    template: str
    image_max_pixels: PositiveInt
    freeze_multi_modal_projector: bool
    preprocessing_workers: PositiveInt
    dataloader_workers: Annotated[int, Field(ge=0)]
    logging_steps: PositiveInt
    save_steps: PositiveInt
    keep_checkpoints: PositiveInt


class Sft(EpochTraining):
    source: Source = "build"
    released: dict[str, str] = {}
    engine: Literal["llamafactory", "cpu"]
    freeze_vision_tower: bool = True
    llamafactory: LlamaFactorySettings | None = None

    def stage_slice(self) -> dict:
        """What SFT trains with: the LLaMA-Factory block only where that engine runs."""
        unused_engine = {"llamafactory"} if self.engine == "cpu" else set()
        return self.model_dump(exclude={"resources", "source", "released", *unused_engine})

    @model_validator(mode="after")
    def _engine_settings(self):
        if self.engine == "llamafactory" and self.llamafactory is None:
            raise ValueError("engine 'llamafactory' needs its settings under sft.llamafactory")
        return self


class Upcycle(Strict):
    num_experts: PositiveInt
    top_k: PositiveInt
    noise_std: Annotated[float, Field(ge=0)]
    router_std: PositiveFloat
    router_aux_loss_coef: Annotated[float, Field(ge=0)]
    seed: int = 42
    resources: Resources

    @model_validator(mode="after")
    def _top_k(self):
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k ({self.top_k}) must not exceed num_experts ({self.num_experts})")
        return self


class Warmup(EpochTraining):
    engine: Literal["accelerate", "cpu"]
    heldout_pairs: Annotated[int, Field(ge=0)]
    max_image_side: PositiveInt
    max_pixels: PositiveInt
    gradient_checkpointing: bool
    grad_clip: PositiveFloat

    @model_validator(mode="after")
    def _one_node(self):
        if self.engine == "accelerate" and self.resources.nodes != 1:
            raise ValueError("the accelerate engine runs on the GPUs of one node: set resources.nodes to 1")
        return self


class Discriminator(Strict):
    source: Source = "build"
    released: str = ""
    model: str
    upcycle: Upcycle
    value_head_dropout: Fraction
    warmup: Warmup


class VerlSettings(Strict):
    """How the verl engine spends the GPUs (memory, batching, checkpoints): no effect on the math."""

    strategy: Literal["fsdp", "fsdp2"]
    rollout_tensor_parallel: PositiveInt
    rollout_gpu_memory_utilization: Annotated[float, Field(gt=0, lt=1)]
    max_num_batched_tokens: PositiveInt
    ppo_max_token_len_per_gpu: PositiveInt
    log_prob_max_token_len_per_gpu: PositiveInt
    gradient_checkpointing: bool
    offload: bool
    save_freq: PositiveInt
    keep_checkpoints: PositiveInt


class OnPolicyTraining(Strict):
    """Rollout-based training with verl or the CPU loop: what alignment and RLVR share."""

    source: Source = "build"
    engine: Literal["verl", "cpu"]
    steps: PositiveInt
    prompts_per_step: PositiveInt
    rollouts_per_prompt: Annotated[int, Field(ge=2)]
    max_prompt_length: PositiveInt
    max_response_length: PositiveInt
    temperature: PositiveFloat
    grad_clip: PositiveFloat
    kl_coef: Annotated[float, Field(ge=0)]
    freeze_vision_tower: bool = False
    seed: int = 42
    verl: VerlSettings
    resources: Resources

    @model_validator(mode="after")
    def _vision_tower_frozen_only_where_honoured(self):
        if self.engine == "verl" and self.freeze_vision_tower:
            raise ValueError(
                "freeze_vision_tower: true cannot be honoured by verl 0.9.1: its actor declares the"
                " setting but never reads it, so the vision tower would train anyway; set it false, or use"
                " engine: cpu"
            )
        return self

    def stage_slice(self, exclude: frozenset = frozenset()) -> dict:
        """What a job of this stage trains with: not where it runs or comes from, nor the settings of
        an engine it does not use."""
        unused_engine = {"verl"} if self.engine == "cpu" else set()
        return self.model_dump(exclude={"resources", "source", "released", *exclude, *unused_engine})


class Align(OnPolicyTraining):
    released: dict[str, str] = {}
    actor_lr: PositiveFloat
    disc_lr: PositiveFloat
    weight_decay: Annotated[float, Field(ge=0)]
    clip_ratio: PositiveFloat
    alpha: Fraction
    format_penalty: Annotated[float, Field(ge=0)]
    score_clip: PositiveFloat
    score_reg_coef: Annotated[float, Field(ge=0)]


class DynamicSampling(Strict):
    enable: bool
    gen_prompts_per_step: PositiveInt
    # a cap on generation batches per step: the cpu engine's; verl 0.9.1's V1 trainer has none
    max_num_gen_batches: PositiveInt | None = None


class OverlongBuffer(Strict):
    enable: bool
    length: PositiveInt
    penalty_factor: Annotated[float, Field(ge=0)]


class AlgorithmSettings(Strict):
    loss_mode: Literal["vanilla", "gspo"]
    loss_agg_mode: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "token-sum"]
    clip_ratio_low: PositiveFloat
    clip_ratio_high: PositiveFloat
    clip_ratio_c: PositiveFloat
    weight_decay: Annotated[float, Field(ge=0)]
    lr_warmup_steps: Annotated[int, Field(ge=0)]
    # where lr_warmup_steps is 0, a fraction of the steps warms up instead (GSPO's script: 0.05), as verl does
    lr_warmup_steps_ratio: Fraction = 0.0
    dynamic_sampling: DynamicSampling
    overlong_buffer: OverlongBuffer
    # verl's per-GPU token budgets where an algorithm's script raises them (None: the stage's verl.*)
    ppo_max_token_len_per_gpu: PositiveInt | None = None
    log_prob_max_token_len_per_gpu: PositiveInt | None = None


class Rl(OnPolicyTraining):
    released: dict[str, dict[str, str]] = {}
    inits: list[Init]
    algorithms: list[Algorithm]
    lr: PositiveFloat
    accuracy_weight: Fraction
    format_weight: Fraction
    algorithm: dict[Algorithm, AlgorithmSettings]

    def job_slice(self, algo: str) -> dict:
        """The shared RL settings plus this algorithm's own: editing one algorithm reruns only its runs."""
        common = self.stage_slice(frozenset({"inits", "algorithms", "algorithm"}))
        return {**common, "algorithm": self.algorithm[algo].model_dump()}

    @model_validator(mode="after")
    def _settings_for_each_algorithm(self):
        missing = [a for a in self.algorithms if a not in self.algorithm]
        if missing:
            raise ValueError(f"no settings under rl.algorithm for {missing}")
        too_long = [
            name
            for name, settings in self.algorithm.items()
            if settings.overlong_buffer.enable and settings.overlong_buffer.length >= self.max_response_length
        ]
        if too_long:
            raise ValueError(f"overlong_buffer.length of {too_long} must be shorter than max_response_length")
        capped = [n for n, a in self.algorithm.items() if a.dynamic_sampling.max_num_gen_batches is not None]
        if self.engine == "verl" and capped:
            raise ValueError(
                f"algorithm.{capped[0]}.dynamic_sampling.max_num_gen_batches cannot be honoured by verl"
                " 0.9.1: its V1 trainer refills a step until the batch is full, with no cap"
                " (gen_prompts_per_step bounds only the prompts in flight); leave it unset with engine: verl"
            )
        return self


class Scoring(Strict):
    """Which lmms-eval task(s) and metric measure a benchmark, on which scale, and which judge environment
    the tasks read (lmms-eval's task families read different variables: integration-reference §5.4)."""

    tasks: Annotated[list[str], Field(min_length=1)]
    metric: str
    scale: Literal[1, 100]  # 100 turns a 0-1 fraction into the tables' percent
    # none: no judge (not started); fallback: only our variants' judge fallback; else the family's variables
    judge: Literal["none", "fallback", "llm_judge", "openai", "reasoning"] = "none"


class Judge(Strict):
    """The LLM judge: a vLLM OpenAI server on the evaluation job's first GPU, checked healthy before use."""

    model: str
    max_model_len: PositiveInt
    gpu_memory_utilization: Annotated[float, Field(gt=0, lt=1)]
    enforce_eager: bool  # no CUDA graphs: their memory goes to the KV cache
    startup_timeout_s: PositiveInt


class LmmsEvalSettings(Strict):
    """How lmms-eval's vLLM model runs on the job's other GPUs."""

    tensor_parallel: PositiveInt
    gpu_memory_utilization: Annotated[float, Field(gt=0, lt=1)]
    batch_size: PositiveInt
    prompt_tokens: PositiveInt  # room for the prompt, images included, beside a task's longest answer


class Eval(Strict):
    engine: Literal["lmms_eval", "cpu"]
    temperature: Annotated[float, Field(ge=0)]
    top_p: Annotated[float, Field(gt=0, le=1)]
    max_new_tokens: PositiveInt | None = None  # the cpu engine's; lmms-eval runs each task's own limit
    seed: int = 1
    variants: list[str]
    benchmarks: Annotated[list[Benchmark], Field(min_length=1)]
    scoring: dict[Benchmark, Scoring]
    judge: Judge | None = None
    lmms_eval: LmmsEvalSettings | None = None
    synthetic: Synthetic | None = None  # the CPU engine's held-out sets; lmms-eval brings its own
    resources: Resources
    # a benchmark's evaluation job asks for these hours instead of resources.hours (lmms_eval engine)
    benchmark_hours: dict[Benchmark, PositiveFloat] = {}

    @model_validator(mode="after")
    def _engine_needs(self):
        unscored = [b for b in self.benchmarks if b not in self.scoring]
        if unscored:
            raise ValueError(f"no eval.scoring for {unscored}")
        if self.engine == "cpu":
            if self.synthetic is None:
                raise ValueError("engine 'cpu' evaluates on synthetic sets: add eval.synthetic")
            if self.max_new_tokens is None:
                raise ValueError("engine 'cpu' generates up to eval.max_new_tokens: add it")
            several = [b for b in self.benchmarks if len(self.scoring[b].tasks) != 1]
            if several:
                raise ValueError(f"engine 'cpu' scores one task per benchmark; {several} list several")
        elif self.judge is None or self.lmms_eval is None:
            raise ValueError("engine 'lmms_eval' needs eval.judge and eval.lmms_eval")
        elif self.resources.nodes != 1 or self.resources.gpus < 2:
            raise ValueError("engine 'lmms_eval' runs on one node with at least 2 GPUs (one for the judge)")
        return self

    def benchmark_resources(self, benchmark: str) -> Resources:
        hours = self.benchmark_hours.get(benchmark, self.resources.hours)
        return self.resources.model_copy(update={"hours": hours})

    def needs_judge(self, benchmarks: list[str] | None = None) -> bool:
        """Whether the lmms_eval engine serves the judge for any of `benchmarks` (all configured: None)."""
        benchmarks = self.benchmarks if benchmarks is None else benchmarks
        return self.engine == "lmms_eval" and any(self.scoring[b].judge != "none" for b in benchmarks)

    def stage_slice(self, benchmarks: list[str] | None = None) -> dict:
        """What an evaluation job of `benchmarks` (all configured: None) measures with: their scoring only,
        the judge only where they use it; not the variants, sets or resources of the whole plan."""
        benchmarks = self.benchmarks if benchmarks is None else benchmarks
        unused = {"judge", "lmms_eval"} if self.engine == "cpu" else {"synthetic"}
        if not self.needs_judge(benchmarks):
            unused.add("judge")
        plan = {"resources", "benchmark_hours", "variants", "scoring", "benchmarks"}
        sliced = self.model_dump(exclude={*plan, *unused})
        return sliced | {
            "benchmarks": benchmarks,
            "scoring": {b: self.scoring[b].model_dump() for b in benchmarks},
        }


# An ablation setting -> its rows: (label in paper_ablations.csv, the evaluation variant that measures it),
# in the paper's order. "SFT on 1.37M" is the full recipe again, beside its 107K counterpart.
ABLATIONS: dict[str, list[tuple[str, str]]] = {
    "full": [("prism-{algo} (full)", "prism-{algo}")],
    "dense_discriminator": [("dense 4B discriminator", "ablation-dense_discriminator")],
    "text_only_discriminator": [("text-only discriminator", "ablation-text_only_discriminator")],
    "no_sft": [("without SFT", "ablation-no_sft")],
    "no_alignment": [("without alignment", "sft-{algo}")],
    "sft_subset": [("SFT on 107K only", "ablation-sft_subset"), ("SFT on 1.37M", "prism-{algo}")],
}
# the settings that train their own chain; the others reuse runs of the main table
TRAINED_ABLATIONS = [s for s, rows in ABLATIONS.items() if rows[0][1].startswith("ablation-")]
AblationSetting = Literal[
    "dense_discriminator", "text_only_discriminator", "no_sft", "no_alignment", "sft_subset"
]


class Ablations(Strict):
    """Rows of the paper's ablation table for one policy and RL algorithm, beside the full recipe.
    `dense_discriminator` warms a dense model and aligns with it; `text_only_discriminator` warms the
    upcycled MoE without images and aligns with it; `no_sft` aligns the base model; `no_alignment` is the
    SFT-initialised RL run; `sft_subset` runs SFT on only the `sft_subset` parts of the SFT set, then the
    recipe."""

    policy: str
    algorithm: Algorithm
    settings: list[AblationSetting]
    dense_discriminator: str  # a key of models
    sft_subset: list[str] = []  # parts of data.sft (its repos' names) the sft_subset row trains on
    paper_results: str

    def rows(self) -> list[tuple[str, str]]:
        """(paper label, evaluation variant) of each configured row, in the paper's order."""
        return [
            (label.format(algo=self.algorithm), variant.format(algo=self.algorithm))
            for setting, rows in ABLATIONS.items()
            if setting == "full" or setting in self.settings
            for label, variant in rows
        ]

    def trained(self) -> list[str]:
        """The settings that train their own chain (the others reuse runs of the main table)."""
        return [s for s in self.settings if s in TRAINED_ABLATIONS]


class WandbSettings(Strict):
    """Where W&B runs go; the API key comes from WANDB_API_KEY or `wandb login`'s cache, never from here."""

    entity: str = ""  # a team or user; empty: the login's default entity
    mode: Literal["online", "offline"] = "online"  # offline: runs kept under the job's work directory


class Tracking(Strict):
    """Live per-step logs of every training job: TensorBoard event files under the job's work directory,
    W&B runs where `wandb` is listed. Changing it reruns nothing."""

    backends: Annotated[list[Literal["tensorboard", "wandb"]], Field(min_length=1)] = ["tensorboard"]
    project: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")] = "prism"
    wandb: WandbSettings = WandbSettings()

    @model_validator(mode="after")
    def _each_backend_once(self):
        if len(set(self.backends)) != len(self.backends):
            raise ValueError(f"backends lists a backend twice: {self.backends}")
        return self


class Tables(Strict):
    paper_results: str


class Config(Strict):
    mode: Literal["paper", "tiny"]
    paths: Paths = Paths()
    cluster: Cluster = Cluster()
    models: dict[str, Model]
    policies: Annotated[list[Policy], Field(min_length=1)]
    data: Data
    sft: Sft
    discriminator: Discriminator
    align: Align
    rl: Rl
    eval: Eval
    tables: Tables
    ablations: Ablations | None = None
    tracking: Tracking = Tracking()

    @model_validator(mode="after")
    def _cross_references(self):
        problems = []
        for i, policy in enumerate(self.policies):
            if policy.model not in self.models:
                problems.append(
                    f"policies.{i}.model: {policy.model!r} is not in models {sorted(self.models)}"
                )
        if self.discriminator.model not in self.models:
            problems.append(
                f"discriminator.model: {self.discriminator.model!r} is not in models {sorted(self.models)}"
            )
        if self.eval.needs_judge() and self.eval.judge.model not in self.models:
            judge = self.eval.judge.model
            problems.append(f"eval.judge.model: {judge!r} is not in models {sorted(self.models)}")
        names = [p.name for p in self.policies]
        problems += [
            f"policies: the name {name!r} is given to {names.count(name)} policies; each needs its own"
            for name in sorted({n for n in names if names.count(n) > 1})
        ]
        problems += self._ablation_problems()
        problems += self._released_problems()
        problems += self._gpu_problems()
        allowed = self.variant_names()
        for i, variant in enumerate(self.eval.variants):
            if variant not in allowed:
                problems.append(f"eval.variants.{i}: {variant!r} is not one of {allowed}")
        for resources, where in self.stage_resources():
            if resources.gpus % resources.nodes:
                problems.append(
                    f"{where}.resources.gpus: {resources.gpus} GPUs do not split evenly over "
                    f"{resources.nodes} nodes; ask for a multiple of nodes"
                )
            elif resources.gpus > self.cluster.gpus_per_node * resources.nodes:
                problems.append(
                    f"{where}.resources.gpus: {resources.gpus} GPUs do not fit on {resources.nodes} node(s) "
                    f"of cluster.gpus_per_node={self.cluster.gpus_per_node}"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _released_problems(self) -> list[str]:
        """A stage taken from released checkpoints needs one for every policy (or run) it serves."""
        problems = []
        for stage in ("sft", "align"):
            block = getattr(self, stage)
            missing = [
                p.name for p in self.policies if block.source == "released" and not block.released.get(p.name)
            ]
            if missing:
                problems.append(
                    f"{stage}.released: no released checkpoint for {missing} although {stage}.source is "
                    f"released (there are for {sorted(block.released)}); build those ({stage}.source: build) "
                    "or drop the policies"
                )
        if self.discriminator.source == "released" and not self.discriminator.released:
            problems.append("discriminator.released: empty although discriminator.source is released")
        if self.rl.source == "released":
            runs = [f"{init}-{algo}" for init in self.rl.inits for algo in self.rl.algorithms]
            missing = [
                f"{p.name}/{run}"
                for p in self.policies
                for run in runs
                if not self.rl.released.get(p.name, {}).get(run)
            ]
            if missing:
                problems.append(
                    f"rl.released: no released checkpoint for the runs {missing} although rl.source is "
                    "released, so they would be trained. Set rl.source: build, or narrow rl.inits / "
                    "rl.algorithms to the released runs"
                )
        return problems

    def _gpu_problems(self) -> list[str]:
        """What Slurm would refuse at submission, or run on the wrong partition."""
        problems = []
        engines = {
            "sft": self.sft.engine,
            "discriminator.warmup": self.discriminator.warmup.engine,
            "align": self.align.engine,
            "rl": self.rl.engine,
            "eval": self.eval.engine,
        }
        for resources, where in self.stage_resources():
            engine = engines.get(where, "cpu")
            if resources.gpus == 0 and engine != "cpu":
                problems.append(
                    f"{where}.resources.gpus: 0, but engine {engine!r} runs on GPUs; ask for at least 1"
                )
            if resources.nodes > 1 and resources.gpus and not self.cluster.gpu_model:
                problems.append(
                    f"cluster.gpu_model: empty, but {where} runs on {resources.nodes} nodes, whose per-node "
                    "GPU request (--gres=gpu:MODEL:N) needs the GPU type Slurm knows, e.g. h100"
                )
        return problems

    def warnings(self) -> list[str]:
        """Settings that run but waste the cluster: a multi-node job on part of each node."""
        found = []
        for resources, where in self.stage_resources():
            per_node = resources.gpus // resources.nodes
            if resources.nodes > 1 and per_node < self.cluster.gpus_per_node:
                found.append(
                    f"{where}.resources: {resources.nodes} nodes x {per_node} GPUs of "
                    f"{self.cluster.gpus_per_node}-GPU nodes; the job waits for {resources.nodes} nodes and "
                    f"its processes talk across the network, where {resources.gpus} GPUs fit on "
                    f"{-(-resources.gpus // self.cluster.gpus_per_node)} node(s)"
                )
        return found

    def variant_names(self) -> list[str]:
        """Every table row a policy can have: base, SFT, aligned, and each (init, algorithm) RL run."""
        rl = [f"{init}-{algo}" for init in self.rl.inits for algo in self.rl.algorithms]
        return ["instruct", "sft", "prism", *rl]

    def evaluated_variants(self) -> list[str]:
        """What the evaluation rule may be asked for: the table's rows and the ablation rows."""
        ablation = [variant for _, variant in self.ablations.rows()] if self.ablations else []
        return list(dict.fromkeys([*self.variant_names(), *ablation]))

    def _ablation_problems(self) -> list[str]:
        ablations = self.ablations
        if ablations is None or not ablations.settings:
            return []  # no ablation row is built: the block is not used
        problems = []
        if ablations.policy not in {p.name for p in self.policies}:
            problems.append(f"ablations.policy: {ablations.policy!r} is not one of the policies")
        if ablations.dense_discriminator not in self.models:
            problems.append(
                f"ablations.dense_discriminator: {ablations.dense_discriminator!r} is not in models "
                f"{sorted(self.models)}"
            )
        if ablations.algorithm not in self.rl.algorithm:
            problems.append(f"ablations.algorithm: no settings under rl.algorithm.{ablations.algorithm}")
        if "sft_subset" in ablations.settings:
            parts = self.data.sft.parts()
            subset = ablations.sft_subset
            if not subset or set(subset) - set(parts) or set(subset) == set(parts):
                problems.append(
                    f"ablations.sft_subset: {subset} must name some, not all, of the SFT set's parts "
                    f"{parts} (its repos' names, or data.sft.synthetic.parts)"
                )
        return problems

    def stage_resources(self) -> list[tuple[Resources, str]]:
        return [
            (self.sft.resources, "sft"),
            (self.discriminator.upcycle.resources, "discriminator.upcycle"),
            (self.discriminator.warmup.resources, "discriminator.warmup"),
            (self.align.resources, "align"),
            (self.rl.resources, "rl"),
            (self.eval.resources, "eval"),
        ]

    def policy(self, name: str) -> Policy:
        return next(p for p in self.policies if p.name == name)


def _allowed_keys(loc: tuple) -> list[str]:
    """Field names accepted at the mapping that holds `loc[-1]`, found by walking the models."""
    annotation: Any = Config
    for part in loc[:-1]:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            annotation = annotation.model_fields[part].annotation
        elif get_origin(annotation) in (dict, list):
            annotation = get_args(annotation)[-1]
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """`X | None` and `Annotated[X, ...]` -> X."""
    while get_origin(annotation) is Annotated or type(None) in get_args(annotation):
        args = [a for a in get_args(annotation) if a is not type(None)]
        annotation = args[0]
    return annotation


def _describe(error: dict) -> str:
    loc = tuple(error["loc"])
    key = ".".join(str(part) for part in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key; allowed here: {', '.join(_allowed_keys(loc))}"
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    message = re.sub(r"^Value error, ", "", error["msg"])
    return (
        f"{key}: {message} (got {error.get('input')!r})"
        if error["type"] != "value_error"
        else (f"{key}: {message}")
    )


def load_config(raw: dict) -> Config:
    """Validate a merged config mapping; raise ConfigError naming every bad key."""
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        lines = sorted({_describe(e) for e in err.errors()})
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines)) from None
