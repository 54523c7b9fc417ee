"""Run a verl trainer as one pipeline job: resume from the work directory, export the actor to Hugging
Face format, keep the curves, and write the manifest last.

Checkpoints live under `<work>/checkpoints` (Snakemake never deletes the work directory), and verl's
`trainer.resume_mode=auto` picks up the latest one, so a preempted or failed job loses at most
`save_freq` steps when rerun.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from prism.core.tracking import job_tracking, verl_environment
from prism.core.training import write_curves
from prism.verl.command import RAY_ENV, TrainerJob, as_overrides

# Headline figures copied from verl's step logs into the manifest, when present.
SUMMARY_METRICS = ("critic/score/mean", "critic/rewards/mean", "response_length/mean", "actor/pg_loss")


def compose(overrides: list[str], config_name: str = "ppo_trainer", config_dir: Path | None = None):
    """The config verl will run with: its own tree (or ours on top of it) plus our overrides, resolved."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir, initialize_config_module

    context = (
        initialize_config_dir(str(config_dir), version_base=None)
        if config_dir
        else initialize_config_module("verl.trainer.config", version_base=None)
    )
    with context:
        return hydra_compose(config_name=config_name, overrides=overrides)


def last_saved_step(checkpoints: Path) -> int:
    """verl writes this tracker only after a checkpoint is complete."""
    tracker = checkpoints / "latest_checkpointed_iteration.txt"
    return int(tracker.read_text().strip()) if tracker.exists() else 0


def step_metrics(log_files: list[Path]) -> dict[int, dict]:
    """verl's file-logger lines by step; a later attempt's line for a step replaces an earlier one."""
    steps: dict[int, dict] = {}
    for path in log_files:
        for line in path.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                scalars = {k: v for k, v in entry["data"].items() if isinstance(v, (int, float))}
                steps[int(entry["step"])] = scalars
    return dict(sorted(steps.items()))


def trainer_job(args, experiment: str) -> TrainerJob:
    """A stage's verl run from its command-line arguments; data is the input named `data`. The experiment
    is the job's run name where the rule gives one (`--tracking`), else `experiment`."""
    tracking = job_tracking(getattr(args, "tracking", None), args.work, experiment)
    return TrainerJob(
        model=args.model.resolve(),
        data=args.data.resolve(),
        checkpoints=(args.work / "checkpoints").resolve(),
        experiment=tracking.run,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        trackers=tracking.backends,
        project=tracking.project,
    )


def export_actor(actor: Path, out: Path) -> None:
    """verl's FSDP shards of the actor, merged into a Hugging Face model with its processor."""
    subprocess.run(
        [sys.executable, "-m", "verl.model_merger", "merge", "--backend", "fsdp"]
        + ["--local_dir", str(actor), "--target_dir", str(out)],
        check=True,
    )


def train(entry: list[str], overrides: list[str], work: Path, tracking: dict | None) -> int:
    """One attempt, run in the work directory (where Hydra's output folders land) with its own step log
    (verl's file logger truncates the file it opens) and its own TensorBoard or W&B run. The loggers live
    in verl's TaskRunner actor, so their paths travel in the Ray job's environment, not the driver's."""
    work.mkdir(parents=True, exist_ok=True)
    attempt = len(list(work.glob("steps-*.jsonl"))) + 1
    log_file = work.resolve() / f"steps-{attempt:03d}.jsonl"
    trackers = verl_environment(job_tracking(tracking, work, ""))
    loggers = [
        f"{RAY_ENV}{name}={value}" for name, value in {"VERL_FILE_LOGGER_PATH": log_file, **trackers}.items()
    ]
    env = os.environ | {"HYDRA_FULL_ERROR": "1"}
    return subprocess.run([sys.executable, *entry, *overrides, *loggers], env=env, cwd=work).returncode


def run_verl(args, stage: str, entry: list[str], settings: dict, config_name: str, config_dir=None) -> None:
    """`entry` is the trainer's module invocation, e.g. ["-m", "verl.trainer.main_ppo"]."""
    from omegaconf import OmegaConf

    from prism.core.manifest import MANIFEST, write_manifest

    started = time.time()
    checkpoints = Path(settings["trainer.default_local_dir"])
    overrides = as_overrides(settings)
    args.out.mkdir(parents=True, exist_ok=True)
    resolved = compose(overrides, config_name, config_dir)
    (args.out / "verl_config.yaml").write_text(OmegaConf.to_yaml(resolved, resolve=True))
    resumed_from, total = last_saved_step(checkpoints), settings["trainer.total_training_steps"]
    # An attempt that trained to the end but failed afterwards leaves only the export to do.
    print(f"{stage}: verl from saved step {resumed_from} of {total}", flush=True)
    if (
        resumed_from < total
        and (returncode := train(entry, overrides, args.work, getattr(args, "tracking", None))) != 0
    ):
        sys.exit(
            f"{stage}: verl exited with status {returncode} after saving step "
            f"{last_saved_step(checkpoints)} of {total}; rerun the job to resume from there ({checkpoints})"
        )
    final = last_saved_step(checkpoints)
    if final != total:
        sys.exit(
            f"{stage}: verl finished but its last checkpoint is step {final} of {total}: see the log above"
        )

    export_actor(checkpoints / f"global_step_{final}" / "actor", args.out)
    steps = step_metrics(sorted(args.work.glob("steps-*.jsonl")))
    write_curves(steps, args.out / "metrics.csv")
    last = steps[max(steps)] if steps else {}
    write_manifest(
        args.out / MANIFEST,
        stage,
        [Path(d) / MANIFEST for d in args.inputs],
        args.config,
        {"steps": final, "resumed_from": resumed_from, **{k: last[k] for k in SUMMARY_METRICS if k in last}},
        started,
        engine={"name": "verl", "overrides": overrides},
    )
