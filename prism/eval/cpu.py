"""CPU evaluator: generate with the paper's sampling, grade with the RL reward's answer check, and write
lmms-eval's result schema inside our fixed per-benchmark JSON."""

from __future__ import annotations

import math
import time

import torch

from prism.core.config import BENCHMARKS
from prism.core.manifest import MANIFEST, write_json_atomic, write_manifest
from prism.core.modeling import generate, load_model, load_processor
from prism.core.reward import compute_score
from prism.core.training import setup
from prism.data.formats import RL_COLUMNS, read_parquet_rows

METRIC = "acc,none"
BATCH = 32


def lmms_eval_result(task: str, accs: list[float], formats: list[float]) -> dict:
    """The part of lmms-eval's results.json the tables read: results[task][metric], n-samples."""
    n = len(accs)
    mean = sum(accs) / n
    stderr = math.sqrt(mean * (1 - mean) / (n - 1)) if n > 1 else 0.0
    return {
        "results": {
            task: {"alias": task, METRIC: mean, "acc_stderr,none": stderr, "format,none": sum(formats) / n}
        },
        "n-samples": {task: {"original": n, "effective": n}},
    }


def run(args) -> None:
    cfg, started = args.config, time.time()
    setup(args.threads, cfg["seed"])
    processor, model = load_processor(args.model), load_model(args.model)
    summary = {}
    for benchmark in cfg["benchmarks"]:
        rows = read_parquet_rows(args.data / f"{benchmark}.parquet", RL_COLUMNS)
        accs, formats = [], []
        torch.manual_seed(cfg["seed"])
        for start in range(0, len(rows), BATCH):
            batch = rows[start : start + BATCH]
            rollouts = generate(
                model, processor, batch, cfg["max_new_tokens"], cfg["temperature"], cfg["top_p"]
            )
            for text, row in zip(rollouts.texts, batch, strict=True):
                score = compute_score(text, row["ground_truth"])
                accs.append(score["acc"])
                formats.append(score["format"])
        task = BENCHMARKS[benchmark][1]
        raw = lmms_eval_result(task, accs, formats)
        result = {
            "benchmark": benchmark,
            "task": task,
            "metric": METRIC,
            "score": 100 * raw["results"][task][METRIC],
            "n_samples": len(rows),
            "lmms_eval": raw,
        }
        write_json_atomic(args.out / f"{benchmark}.json", result)
        summary[benchmark] = result["score"]
        print(f"{benchmark}: {result['score']:.1f} ({len(rows)} samples)", flush=True)
    write_manifest(
        args.out / MANIFEST,
        "eval",
        [f"{args.model}/{MANIFEST}", f"{args.data}/{MANIFEST}"],
        cfg,
        summary,
        started,
    )
