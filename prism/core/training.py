"""What every CPU training loop shares: resumable state in a work directory, schedules, metric logs."""

from __future__ import annotations

import csv
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import torch


def setup(threads: int, seed: int) -> None:
    torch.set_num_threads(max(1, threads))
    random.seed(seed)
    torch.manual_seed(seed)


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

    def save(self, step: int, modules: dict, force: bool = False) -> None:
        if not force and step % self.every:
            return
        state = {name: module.state_dict() for name, module in modules.items()}
        state.update(step=step, python_rng=random.getstate(), torch_rng=torch.get_rng_state())
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
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
        self.path.unlink()
        for row in rows:
            self._append(row)

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


def parse_slice(text: str) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        sys.exit(f"--config is not valid JSON: {err}")


def stage_parser(prog: str, description: str, inputs: tuple[str, ...]):
    """The arguments every stage takes: its config slice, its inputs, its output and work directories."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, type=parse_slice, help="the rule's config slice, JSON")
    for name in inputs:
        parser.add_argument(f"--{name}", required=True, help=f"input artifact directory: {name}")
    parser.add_argument("--out", required=True, type=Path, help="artifact directory; manifest.json last")
    parser.add_argument("--work", required=True, type=Path, help="resumable state, kept across failures")
    parser.add_argument("--threads", type=int, default=1)
    return parser


def unavailable_engine(stage: str, engine: str, issue: int) -> None:
    sys.exit(
        f"{stage}: engine {engine!r} is not available in this version of prism-pipeline (tracked in issue "
        f"#{issue}). Set {stage}.engine: cpu for tiny runs, or {stage}.source: released to use the authors' "
        "checkpoint."
    )
