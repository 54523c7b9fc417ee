"""What every CPU training loop shares: resumable state in a work directory, schedules, metric logs."""

from __future__ import annotations

import csv
import hashlib
import importlib
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from prism.core.config import parse_slice
from prism.core.errors import InputError


def setup(threads: int, seed: int) -> None:
    torch.set_num_threads(max(1, threads))
    random.seed(seed)
    torch.manual_seed(seed)


def epoch_batch(rows: list, seed: int, index: int, batch_size: int) -> list:
    """The index-th batch of a seeded per-epoch shuffle: a pure function of the step, so resumable."""
    per_epoch = math.ceil(len(rows) / batch_size)
    epoch, position = divmod(index, per_epoch)
    order = list(range(len(rows)))
    random.Random(seed + epoch).shuffle(order)
    return [rows[i] for i in order[position * batch_size : (position + 1) * batch_size]]


def optimizer_and_schedule(parameters, cfg: dict, total: int):
    optimizer = torch.optim.AdamW(parameters, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    warmup = round(cfg["warmup_ratio"] * total)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total, warmup, cfg["scheduler"]))


def lr_lambda(total_steps: int, warmup_steps: int, scheduler: str = "constant"):
    """Linear warmup, then constant or cosine decay to zero: the factor LambdaLR multiplies lr by."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if scheduler == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


class Checkpoint:
    """Training state in `work_dir/state.pt`, saved atomically every few steps; a rerun resumes from it."""

    def __init__(self, work_dir: str | Path, every: int):
        self.dir = Path(work_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "state.pt"
        self.every = every

    def load(self, modules: dict) -> int:
        """Restore every module/optimizer in `modules`; return the step to start from (0 if fresh)."""
        if not self.path.exists():
            return 0
        state = torch.load(self.path, weights_only=False)
        for name, module in modules.items():
            module.load_state_dict(state[name])
        random.setstate(state["python_rng"])
        torch.set_rng_state(state["torch_rng"])
        print(f"resumed from step {state['step']} ({self.path})", flush=True)
        return state["step"]

    def save(self, step: int, modules: dict) -> None:
        if step % self.every:
            return
        state = {name: module.state_dict() for name, module in modules.items()}
        state.update(step=step, python_rng=random.getstate(), torch_rng=torch.get_rng_state())
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())  # on disk before the rename makes it the state a rerun loads
        os.replace(tmp, self.path)


class MetricLog:
    """Per-step metrics appended to a CSV (kept across resumes) and echoed as one progress line."""

    def __init__(self, path: str | Path, total_steps: int):
        self.path = Path(path)
        self.total = total_steps
        self.start = time.time()

    def reset_after(self, step: int) -> None:
        """Drop rows past `step` (they belong to work lost in an interruption)."""
        if not self.path.exists():
            return
        rows = [r for r in self.rows() if int(r["step"]) <= step]
        if not rows:
            self.path.unlink()
            return
        kept = MetricLog(self.path.with_suffix(".tmp"), self.total)
        kept.path.unlink(missing_ok=True)
        for row in rows:
            kept._append(row)
        os.replace(kept.path, self.path)  # a kill now or before leaves one whole curve, never a part

    def log(self, step: int, **metrics) -> None:
        row = {"step": step, **{k: round(float(v), 6) for k, v in metrics.items()}}
        self._append(row)
        shown = " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "step")
        print(f"step {step}/{self.total} {shown} [{time.time() - self.start:.1f}s]", flush=True)

    def _append(self, row: dict) -> None:
        new = not self.path.exists()
        with self.path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        with self.path.open() as handle:
            return list(csv.DictReader(handle))


def write_curves(steps: dict[int, dict], path: Path) -> None:
    """An engine's per-step metrics ({step: {name: value}}) as the metrics.csv beside its artifact."""
    columns = sorted({key for row in steps.values() for key in row})
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", *columns])
        for step, row in steps.items():
            writer.writerow([step, *(row.get(c, "") for c in columns)])


def stage_parser(prog: str, description: str, inputs: tuple[str, ...], optional: tuple[str, ...] = ()):
    """The arguments every stage takes: its config slice, its inputs, its output and work directories.
    `optional` inputs are those only some engines read."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, type=parse_slice, help="the rule's config slice, JSON")
    for name in inputs:
        parser.add_argument(f"--{name}", required=True, type=Path, help=f"input artifact directory: {name}")
    for name in optional:
        parser.add_argument(f"--{name}", type=Path, help=f"input artifact directory: {name} (some engines)")
    parser.add_argument("--out", required=True, type=Path, help="artifact directory; manifest.json last")
    parser.add_argument("--work", required=True, type=Path, help="resumable state, kept across failures")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--nodes", type=int, default=1, help="nodes of the job's allocation")
    parser.add_argument("--gpus-per-node", type=int, default=0, help="GPUs on each of those nodes")
    parser.add_argument(
        "--tracking", type=parse_slice, help="live curves: the config's tracking block and the job's run name"
    )
    return parser


def fingerprint(config: dict, input_dirs: list[Path], code: str) -> str:
    """What a job trains: its config slice, its inputs' manifests and the fingerprint of the code it runs.
    State computed by other code, settings or inputs is never resumed."""
    from prism.core.manifest import MANIFEST, file_sha256

    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for manifest in sorted(file_sha256(Path(directory) / MANIFEST) for directory in input_dirs):
        digest.update(manifest.encode())
    digest.update(code.encode())
    return digest.hexdigest()[:16]


def run_stage(
    stage: str,
    description: str,
    inputs: tuple[str, ...],
    issue: int,
    runners: dict[str, Callable | str],
    engine: Callable[[dict], str] | None = None,
    argv: list[str] | None = None,
    optional: tuple[str, ...] = (),
) -> None:
    """Entry point of a stage: parse, refuse an engine this version lacks, run in a keyed work directory.
    A runner given by module name is that module's `run`, imported only when its engine is chosen."""
    args = stage_parser(f"python -m prism.{stage}", description, inputs, optional).parse_args(argv)
    chosen = engine(args.config) if engine else "cpu"
    if chosen not in runners:
        sys.exit(
            f"{stage}: engine {chosen!r} is not available in this version of prism-pipeline (tracked in "
            f"issue #{issue}). Set the engine to cpu for tiny runs, or the stage's source to released to use "
            "the authors' checkpoint."
        )
    given = [name for name in (*inputs, *optional) if getattr(args, name) is not None]
    args.inputs = [getattr(args, name) for name in given]
    unfinished = [
        f"--{name} {path}"
        for name, path in zip(given, args.inputs, strict=True)
        if not (path / "manifest.json").exists()
    ]
    if unfinished:
        sys.exit(
            f"{stage}: input {', '.join(unfinished)} has no manifest.json, so it is unfinished (an "
            "interrupted download or a crashed job) or not an artifact of this pipeline. Rerun the rule "
            "that makes it (Snakemake does so by itself) or point the argument at a finished artifact."
        )
    from prism.core.closure import code_fingerprint, stage_roots

    args.code = code_fingerprint(stage_roots(f"prism.{stage}", chosen))
    args.work = args.work / fingerprint(args.config, args.inputs, args.code)
    runner = runners[chosen]
    if isinstance(runner, str):
        runner = importlib.import_module(runner).run
    try:
        runner(args)
    except InputError as err:
        sys.exit(
            f"{stage}: {err}. No manifest was written to {args.out}; fix or rebuild that input (delete "
            "its directory and rerun the rule that makes it), then rerun: the training state in "
            f"{args.work} is kept and resumed."
        )


class TrainingRun:
    """One resumable training job: state in the work directory, a metrics CSV and live curves of the same
    records (prism.core.tracking), the manifest at the end."""

    def __init__(
        self, args, stage: str, total_steps: int, state: dict, checkpoint=None, main: bool = True, curves=None
    ):
        """`checkpoint` defaults to torch.save of `state`; `main` is False on all but one of several ranks;
        `curves` defaults to torch's TensorBoard writer (and W&B) as `args.tracking` says."""
        from prism.core.tracking import Curves, job_tracking

        self.args, self.stage, self.total, self.state, self.main = args, stage, total_steps, state, main
        self.started = time.time()
        args.work.mkdir(parents=True, exist_ok=True)
        self.checkpoint = checkpoint or Checkpoint(args.work, every=max(1, total_steps // 4))
        self.start = self.checkpoint.load(state)
        self.log = MetricLog(args.work / "metrics.csv", total_steps)
        self.curves = None
        if main:
            self.log.reset_after(self.start)
            tracking = job_tracking(getattr(args, "tracking", None), args.work, stage)
            self.curves = curves or Curves(tracking, stage, args.config)

    def steps(self) -> range:
        return range(self.start, self.total)

    def record(self, step: int, **metrics) -> None:
        if self.main:
            self.log.log(step, **metrics)
            self.curves.log(step, metrics)
        self.checkpoint.save(step, self.state)

    def metric(self, name: str) -> list[float]:
        return [float(row[name]) for row in self.log.rows() if row.get(name) not in (None, "")]

    def finish(self, metrics: dict) -> None:
        """Copy the curves beside the artifact, then write its manifest: last, by rename. Its memory peak is
        this process's, one rank, unless the engine gathered every rank's into `metrics`."""
        from prism.core.manifest import MANIFEST, peak_memory, peak_memory_per_rank, write_manifest

        self.curves.close()
        shutil.copy(self.args.work / "metrics.csv", self.args.out / "metrics.csv")
        inputs = [Path(d) / MANIFEST for d in self.args.inputs]
        write_manifest(
            self.args.out / MANIFEST,
            self.stage,
            inputs,
            self.args.config,
            {"steps": self.total, "peak_memory": peak_memory_per_rank([peak_memory()]), **metrics},
            self.started,
            code_fingerprint=getattr(self.args, "code", None),
        )
