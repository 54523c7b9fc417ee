"""Checks to run before GPU jobs are submitted, reporting every problem at once: a run that will stop
on a missing account, a full disk or a missing token should stop now, not hours into the queue."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

GB = 1024**3


def read_config(workflow_dir: Path, configfiles: list[str]) -> tuple[dict, list[str]]:
    """The config as Snakemake merges it (the Snakefile's configfile, then each --configfile)."""
    from snakemake.utils import update_config

    merged: dict = {}
    problems = []
    for name in [workflow_dir / "config" / "config.yaml", *map(Path, configfiles)]:
        try:
            overlay = yaml.safe_load(Path(name).read_text())
        except OSError as err:
            problems.append(f"{name}: cannot read the config file ({err.strerror}); check the path")
            continue
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problems.append(f"{name}: not valid YAML{where}; fix the syntax there")
            continue
        if not isinstance(overlay, dict):
            problems.append(
                f"{name}: must be a mapping of keys at its top level, not {type(overlay).__name__}"
            )
            continue
        update_config(merged, overlay)
    return merged, problems


def profile_settings(profile: str | None) -> dict:
    if not profile:
        return {}
    return yaml.safe_load((Path(profile) / "profile.yaml").read_text()) or {}


def uses_slurm(profile: str | None) -> bool:
    return profile_settings(profile).get("executor") == "slurm"


# Snakemake's names for the deployment setting, and the methods that give a job its envs/*.yaml tools.
DEPLOYMENT_KEYS = ("software-deployment-method", "deployment-method", "deployment", "sdm")
DEPLOYING_METHODS = {"conda", "apptainer"}


def deployment_problems(profile: str) -> list[str]:
    """A cluster run must deploy each rule's environment: without it Snakemake ignores every `conda:`
    and the GPU jobs run in the submitting environment, without vllm, deepspeed, llamafactory or
    lmms_eval, and fail on the compute node after their wait in the queue."""
    settings = profile_settings(profile)
    methods = next((settings[key] for key in DEPLOYMENT_KEYS if key in settings), [])
    methods = {methods} if isinstance(methods, str) else set(methods)
    if settings.get("use-conda"):
        methods.add("conda")
    if methods & DEPLOYING_METHODS:
        return []
    return [
        f"{profile}/profile.yaml submits to Slurm but deploys no software, so every GPU job would run "
        "without its tools (envs/*.yaml); add `software-deployment-method: conda` to the profile, as "
        "profiles/slurm has it"
    ]


def cluster_problems(cfg, gpu_rules: set[str]) -> list[str]:
    problems = []
    for key in ("partition", "account"):
        if not getattr(cfg.cluster, key):
            rules = ", ".join(sorted(gpu_rules))
            problems.append(
                f"cluster.{key} is empty but the Slurm profile submits GPU jobs ({rules}); "
                f"set cluster.{key} to your cluster's {key} (sinfo / sacctmgr show assoc list them)"
            )
    return problems


def existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def disk_problems(cfg, workflow_dir: Path) -> list[str]:
    """Free space against paths.disk_gb; paths on one file system must fit together."""
    needs: dict[int, list[tuple[str, Path, float]]] = {}
    for key in ("results", "work", "hf_cache"):
        path = existing_ancestor(workflow_dir / getattr(cfg.paths, key))
        needs.setdefault(path.stat().st_dev, []).append((key, path, getattr(cfg.paths.disk_gb, key)))
    problems = []
    for entries in needs.values():
        wanted = sum(gb for _, _, gb in entries)
        free = shutil.disk_usage(entries[0][1]).free / GB
        if free < wanted:
            keys = " + ".join(f"paths.disk_gb.{key} ({gb:g})" for key, _, gb in entries)
            where = ", ".join(f"paths.{key} ({path})" for key, path, _ in entries)
            problems.append(
                f"{where}: {free:.1f} GB free but the run needs {keys} = {wanted:g} GB there; free space, "
                "point the paths at a larger file system, or lower the estimate if you know better"
            )
    return problems


def token_present() -> bool:
    """HF_TOKEN or the login cache, as huggingface_hub finds them (the value is never shown)."""
    from huggingface_hub import get_token

    return bool(get_token())


def gated_downloads(cfg, jobs) -> list[str]:
    repos = []
    for job in jobs:
        if job.rule == "fetch_model":
            source = cfg.models[job.wildcards["model"]]
        elif job.rule == "fetch_dataset":
            source = getattr(cfg.data, job.wildcards["dataset"])
        else:
            continue
        if source.source == "hf" and source.hf.gated:
            repos.append(source.hf.repo)
    return repos


def preflight(
    workflow_dir: Path, configfiles: list[str], targets: list[str], profile: str | None
) -> list[str]:
    """Every problem found, each naming the key or file and the fix; empty when the run may go."""
    from prism.cluster.memory import estimates
    from prism.cluster.plan import plan_jobs
    from prism.core.config import ConfigError, load_config

    raw, problems = read_config(workflow_dir, configfiles)
    if problems:
        return problems
    try:
        cfg = load_config(raw)
    except ConfigError as err:
        return [line.strip() for line in str(err).splitlines()[1:]]
    jobs = plan_jobs(workflow_dir, configfiles, targets)
    gpu_rules = {job.rule for job in jobs if job.gpus and not job.local}
    if uses_slurm(profile) and gpu_rules:
        problems += deployment_problems(profile) + cluster_problems(cfg, gpu_rules)
    if jobs:
        problems += disk_problems(cfg, workflow_dir)
    problems += [problem for stage in estimates(cfg, workflow_dir, jobs) for problem in stage.problems]
    gated = gated_downloads(cfg, jobs)
    fetches_benchmarks = any(job.rule == "fetch_benchmarks" for job in jobs)
    if (gated or fetches_benchmarks) and not token_present():
        needing = [f"gated repos {gated}"] if gated else []
        # lmms-eval 0.7.3's MathVista and HallusionBench tasks load their data sets with token=True
        needing += ["the benchmarks (lmms-eval's tasks ask for one)"] if fetches_benchmarks else []
        problems.append(
            f"{' and '.join(needing)} will be downloaded but no Hugging Face token was found; set HF_TOKEN "
            "in the environment or run `hf auth login` (never put the token in a config or a command line)"
        )
    return problems
