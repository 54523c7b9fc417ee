"""Artifact manifests: written last and by rename, so a half-written artifact never looks finished."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import prism

MANIFEST = "manifest.json"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: str | Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def code_version() -> dict:
    root = Path(prism.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"package": prism.__version__, "git_commit": commit}


def write_manifest(
    path: str | Path,
    stage: str,
    inputs: list[str | Path],
    config: dict,
    metrics: dict | None = None,
    started: float | None = None,
    settings: dict | None = None,
    code_fingerprint: str | None = None,
    **extra,
) -> dict:
    """Record what was built, from which inputs (by their own manifests' hashes), with which config and
    code. `settings` are those that change no result (failure thresholds): recorded, never compared."""
    code = code_version()
    if code_fingerprint:
        code["fingerprint"] = code_fingerprint
    manifest = {
        "stage": stage,
        "inputs": {str(p): file_sha256(p) for p in inputs},
        "config": config,
        "code": code,
        "started": started,
        "finished": time.time(),
        "metrics": metrics or {},
        **({"settings": settings} if settings is not None else {}),
        **extra,
    }
    write_json_atomic(path, manifest)
    return manifest


def peak_memory() -> dict[str, float]:
    """This process's memory peak, for its stage's manifest: the most GPU memory torch allocated where
    CUDA is in use, else the host's peak resident set (ru_maxrss, KiB on Linux), each named as such."""
    import resource

    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return {"gpu_allocated_gib": torch.cuda.max_memory_allocated() / 1024**3}
    return {"host_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1024**3}


def peak_memory_per_rank(peaks: list[dict[str, float]]) -> dict[str, list[float]]:
    """The ranks' `peak_memory()` in rank order, as the manifest's `metrics.peak_memory`."""
    return {kind: [round(peak[kind], 4) for peak in peaks] for kind in peaks[0]}
