"""Live training curves: the config's `tracking` block in each engine's own mechanism (verl's
`trainer.logger`, LLaMA-Factory's `report_to`, Accelerate's `log_with`, torch's TensorBoard writer for the
CPU engines).

Each attempt of a job is a run of its own, `<work>/tensorboard/attempt-NNN` (a rerun after a failure is
the next attempt), and logs the steps it trains, numbered from the step it resumed at: TensorBoard shows a
resumed job as one curve, carried on by the next attempt's run. A W&B run is made per attempt too, named
`<job>-attempt-NNN` and grouped by the job.

W&B reads its API key from WANDB_API_KEY or the cache `wandb login` writes: nothing here reads, passes or
writes a key, and every value this module puts on a command line or in a file is a name or a path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

EVENTS = "tensorboard"  # under a job's work directory: `tensorboard --logdir work/` finds every job


@dataclass(frozen=True)
class JobTracking:
    """Where one attempt of one job logs its curves."""

    backends: tuple[str, ...]
    project: str
    run: str  # the job: `<stage>-<policy>-...`, the same for all its attempts
    attempt: int
    log_dir: Path  # this attempt's: TensorBoard event files, W&B's offline runs
    wandb_entity: str = ""
    wandb_mode: str = "online"

    @property
    def attempt_name(self) -> str:
        return f"{self.run}-attempt-{self.attempt:03d}"

    def wandb_environment(self) -> dict[str, str]:
        """What `wandb.init` reads where an engine calls it with no arguments of ours (the HF Trainer's
        callback, verl's tracker); the key is left to the job's environment or the login cache."""
        if "wandb" not in self.backends:
            return {}
        env = {
            "WANDB_PROJECT": self.project,
            "WANDB_MODE": self.wandb_mode,
            "WANDB_DIR": str(self.log_dir),
            "WANDB_RUN_GROUP": self.run,
            "WANDB_NAME": self.attempt_name,
        }
        return env | ({"WANDB_ENTITY": self.wandb_entity} if self.wandb_entity else {})

    def wandb_init_kwargs(self, config: dict | None = None) -> dict:
        """`wandb.init`'s arguments for an engine that calls it with ours (the CPU engines, Accelerate)."""
        return {
            "entity": self.wandb_entity or None,
            "mode": self.wandb_mode,
            "dir": str(self.log_dir),
            "group": self.run,
            "name": self.attempt_name,
            "config": config or {},
        }


def next_attempt(work: Path) -> int:
    """One more than the highest attempt a job's work directory holds."""
    numbers = [
        int(match.group(1))
        for path in (work / EVENTS).glob("attempt-*")
        if (match := re.fullmatch(r"attempt-(\d+)", path.name))
    ]
    return max(numbers, default=0) + 1


def job_tracking(spec: dict | None, work: Path, run: str) -> JobTracking:
    """This attempt's tracking from the rule's `--tracking` JSON: the config's block, and the root of the
    work directories, below which the job's own directory names its run (`work/rl/<policy>/<init>-<algo>`:
    `rl-<policy>-<init>-<algo>`). Without one: the config's defaults, under the name `run`. `work` is the
    job's keyed work directory, one level below its own."""
    from prism.core.config import Tracking

    spec = dict(spec or {})
    if (root := spec.pop("work_root", None)) is not None:
        run = "-".join(work.resolve().parent.relative_to(Path(root).resolve()).parts)
    settings = Tracking.model_validate(spec)
    attempt = next_attempt(work)
    return JobTracking(
        backends=tuple(settings.backends),
        project=settings.project,
        run=run,
        attempt=attempt,
        log_dir=(work / EVENTS / f"attempt-{attempt:03d}").resolve(),
        wandb_entity=settings.wandb.entity,
        wandb_mode=settings.wandb.mode,
    )


def verl_environment(tracking: JobTracking) -> dict[str, str]:
    """What verl's tracker reads in its TaskRunner actor: TensorBoard's directory, W&B's run."""
    tensorboard = {"TENSORBOARD_DIR": str(tracking.log_dir)} if "tensorboard" in tracking.backends else {}
    return tensorboard | tracking.wandb_environment()


def llamafactory_settings(tracking: JobTracking) -> dict:
    """The HF Trainer's integrations LLaMA-Factory passes `report_to` to, and the run's name."""
    return {"report_to": list(tracking.backends), "run_name": tracking.attempt_name}


def llamafactory_environment(tracking: JobTracking) -> dict[str, str]:
    """transformers 5 reads TensorBoard's directory from the environment (`logging_dir` is deprecated)."""
    tensorboard = (
        {"TENSORBOARD_LOGGING_DIR": str(tracking.log_dir)} if "tensorboard" in tracking.backends else {}
    )
    return tensorboard | tracking.wandb_environment()


def accelerate_settings(tracking: JobTracking) -> dict:
    """`Accelerator(log_with=..., project_dir=...)`: its TensorBoard tracker writes under
    `project_dir/<project>`, where `init_trackers` names the project."""
    return {"log_with": list(tracking.backends), "project_dir": str(tracking.log_dir)}


def accelerate_init_kwargs(tracking: JobTracking, config: dict) -> dict:
    """`Accelerator.init_trackers(project, config, init_kwargs)` for this attempt."""
    init = {"wandb": tracking.wandb_init_kwargs()} if "wandb" in tracking.backends else {}
    return {"project_name": tracking.project, "config": flat(config), "init_kwargs": init}


def flat(config: dict, prefix: str = "") -> dict:
    """A nested config slice as the flat scalars TensorBoard's hyperparameter table takes."""
    items = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            items |= flat(value, f"{name}.")
        else:
            items[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return items


class Curves:
    """A CPU engine's per-step scalars, as `<stage>/<metric>`, to torch's TensorBoard writer and W&B."""

    def __init__(self, tracking: JobTracking, stage: str, config: dict):
        self.stage, self.writer, self.wandb_run = stage, None, None
        if "tensorboard" in tracking.backends:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(tracking.log_dir))
        if "wandb" in tracking.backends:
            import wandb

            tracking.log_dir.mkdir(parents=True, exist_ok=True)
            kwargs = tracking.wandb_init_kwargs(config)
            self.wandb_run = wandb.init(project=tracking.project, **kwargs)

    def log(self, step: int, metrics: dict) -> None:
        scalars = {f"{self.stage}/{name}": float(value) for name, value in metrics.items()}
        if self.writer is not None:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, global_step=step)
            self.writer.flush()  # a step takes long enough that a watcher should see it at once
        if self.wandb_run is not None:
            self.wandb_run.log(scalars, step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


class AcceleratedCurves:
    """The warmup's per-step scalars through the Accelerator's own trackers (main process only)."""

    def __init__(self, accelerator, tracking: JobTracking, stage: str, config: dict):
        self.accelerator, self.stage = accelerator, stage
        accelerator.init_trackers(**accelerate_init_kwargs(tracking, config))

    def log(self, step: int, metrics: dict) -> None:
        self.accelerator.log({f"{self.stage}/{k}": float(v) for k, v in metrics.items()}, step=step)
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.flush()

    def close(self) -> None:
        self.accelerator.end_training()
