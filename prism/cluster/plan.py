"""What a run will cost before it is submitted: the DAG's jobs per stage with GPUs, nodes and GPU-hours.

The jobs come from Snakemake's own DAG (its Python API, nothing executed), so the plan is exactly what
`snakemake --executor slurm` would submit; GPU-hours are gpus x runtime of each job.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

STAGE_ORDER = [
    "fetch_model",
    "fetch_dataset",
    "prepare_dataset",
    "prepare_sft_subset",
    "make_benchmarks",
    "fetch_released",
    "fetch_benchmarks",
    "sft",
    "sft_subset",
    "upcycle",
    "warmup_discriminator",
    "warmup_dense_discriminator",
    "warmup_text_only_discriminator",
    "align",
    "align_ablation",
    "rl",
    "rl_ablation",
    "evaluate_benchmark",
    "evaluate",
    "tables",
    "all",
]


@dataclass(frozen=True)
class PlannedJob:
    rule: str
    wildcards: dict
    local: bool
    gpus: int
    nodes: int
    hours: float
    mem_mb: int = 0
    benchmark: str = ""  # the job's Snakemake benchmark file, relative to the workflow directory
    outputs: tuple[str, ...] = ()

    @property
    def gpu_hours(self) -> float:
        return self.gpus * self.hours


def _gpus(resources: dict) -> int:
    """GPUs a job holds: --gpus for one node, or the per-node gres times the nodes."""
    if resources.get("gpu"):
        return int(resources["gpu"])
    gres = str(resources.get("gres", ""))
    if gres.startswith("gpu"):
        return int(gres.rsplit(":", 1)[-1]) * int(resources.get("nodes", 1))
    return 0


def with_dag_jobs(workflow_dir: str | Path, configfiles, targets, forceall: bool, use: Callable):
    """Call `use(jobs)` on the Snakemake jobs that would run for `targets`, inside the API's context."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.enums import Quietness
    from snakemake.settings.types import (
        ConfigSettings,
        DAGSettings,
        OutputSettings,
        ResourceSettings,
        StorageSettings,
        WorkflowSettings,
    )
    from snakemake_interface_executor_plugins.registry import ExecutorPluginRegistry

    workflow_dir = Path(workflow_dir).absolute()
    output = OutputSettings(
        quiet={Quietness.ALL}, log_level_override=logging.ERROR, enable_file_logging=False
    )
    with SnakemakeApi(output) as api:
        workflow_api = api.workflow(
            resource_settings=ResourceSettings(cores=None, nodes=1),
            config_settings=ConfigSettings(configfiles=[Path(f).absolute() for f in configfiles]),
            storage_settings=StorageSettings(),
            workflow_settings=WorkflowSettings(),
            snakefile=workflow_dir / "Snakefile",
            workdir=workflow_dir,
        )
        workflow_api.dag(DAGSettings(targets=set(targets), forceall=forceall))
        # Snakemake has no public "list the jobs" call; these are the steps `--printdag` takes.
        workflow = workflow_api._workflow
        workflow._executor_plugin = ExecutorPluginRegistry().get_plugin("slurm")
        workflow._prepare_dag(forceall=forceall, ignore_incomplete=True, lock_warn_only=True, nolock=True)
        workflow._build_dag()
        return use(sorted(workflow.dag.needrun_jobs(), key=lambda j: j.jobid))


def planned(job) -> PlannedJob:
    resources = {k: v for k, v in job.resources.items() if not k.startswith("_")}
    gpus = _gpus(resources)
    return PlannedJob(
        rule=job.rule.name,
        wildcards=dict(job.wildcards_dict),
        local=job.is_local,
        gpus=gpus,
        nodes=int(resources.get("nodes", 1)),
        hours=float(resources.get("runtime", 0)) / 60 if gpus else 0.0,
        mem_mb=int(resources.get("mem_mb", 0)),
        benchmark=str(job.benchmark or ""),
        outputs=tuple(map(str, job.output)),
    )


def plan_jobs(
    workflow_dir: str | Path, configfiles: list[str] = (), targets: list[str] = (), forceall: bool = False
) -> list[PlannedJob]:
    """The jobs Snakemake would run for `targets` (all out-of-date ones, or every one with forceall)."""
    return with_dag_jobs(
        workflow_dir, configfiles, targets, forceall, lambda jobs: [planned(j) for j in jobs]
    )


def memory_cell(estimates: list) -> str:
    """The largest per-GPU estimate of a rule's jobs in GiB, marked `!` where one of them does not fit."""
    if not estimates:
        return "-"
    peak = max(e.gpu_bytes for e in estimates) / 1024**3
    return f"{peak:.0f}{'' if all(e.fits for e in estimates) else ' !'}"


def summarize(jobs: list[PlannedJob], memory: list | None = None) -> str:
    """A per-rule table: jobs, GPUs per job, nodes, GPU-hours, with `memory` (prism.cluster.memory's
    estimates) the per-GPU GiB, and the total."""
    by_rule: OrderedDict[str, list[PlannedJob]] = OrderedDict()
    for job in sorted(jobs, key=lambda j: STAGE_ORDER.index(j.rule) if j.rule in STAGE_ORDER else 99):
        by_rule.setdefault(job.rule, []).append(job)
    width = max([22, *(len(rule) + 2 for rule in by_rule)])
    memory_header = f"{'GiB/GPU':>9}" if memory is not None else ""
    header = f"{'stage':<{width}}{'jobs':>6}{'GPUs/job':>10}{'nodes':>7}{'GPU-hours':>12}{memory_header}"
    lines = [f"{header}  where"]
    for rule, group in by_rule.items():
        gpus = sorted({j.gpus for j in group})
        nodes = sorted({j.nodes for j in group})
        cell = f"{memory_cell([e for e in memory if e.rule == rule]):>9}" if memory is not None else ""
        lines.append(
            f"{rule:<{width}}{len(group):>6}{'/'.join(map(str, gpus)):>10}{'/'.join(map(str, nodes)):>7}"
            f"{sum(j.gpu_hours for j in group):>12.1f}{cell}  {'local' if group[0].local else 'slurm'}"
        )
    total = sum(j.gpu_hours for j in jobs)
    lines.append(f"{'total':<{width}}{len(jobs):>6}{'':>10}{'':>7}{total:>12.1f}")
    return "\n".join(lines)
