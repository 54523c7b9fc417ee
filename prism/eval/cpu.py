"""CPU evaluator: generate with the paper's sampling, grade with the RL reward's answer check, write the
result in lmms-eval's schema and normalise it as the lmms-eval engine's is (prism/eval/normalise.py).

Each record also keeps every sample's answer accuracy (reasoning) and its caption's agreement with the
scene the generator drew (perception), so the tables can bootstrap intervals and tell the two apart."""

from __future__ import annotations

import math
import time

import torch

from prism.core.errors import InputError
from prism.core.manifest import MANIFEST, peak_memory, peak_memory_per_rank, write_json_atomic, write_manifest
from prism.core.modeling import generate, load_model, load_processor
from prism.core.reward import compute_score
from prism.core.segments import parse_response
from prism.core.training import setup
from prism.data.formats import RL_COLUMNS, read_parquet_rows
from prism.data.synthetic import caption_score
from prism.eval.normalise import benchmark_record

BATCH = 256  # on CPU a tiny model's per-sample cost halves from 32 to 256 rows: per-step overhead dominates


def perception(text: str, truth: dict) -> float:
    """How much of the scene the response's caption gets right; 0 for a response off the format."""
    segments = parse_response(text)
    return caption_score(segments.caption, truth) if segments.valid else 0.0


def lmms_eval_result(task: str, metric: str, accs: list[float], formats: list[float]) -> dict:
    """The part of lmms-eval's results.json that normalisation reads: results[task][metric], n-samples."""
    n = len(accs)
    mean = sum(accs) / n
    stderr = math.sqrt(mean * (1 - mean) / (n - 1)) if n > 1 else 0.0
    return {
        "results": {
            task: {
                "alias": task,
                f"{metric},none": mean,
                f"{metric}_stderr,none": stderr,
                "format,none": sum(formats) / n,
            }
        },
        "n-samples": {task: {"original": n, "effective": n}},
    }


def run(args) -> None:
    cfg, started = args.config, time.time()
    if args.data is None:
        raise InputError("the cpu engine evaluates on synthetic sets: give --data BENCH_DIR")
    setup(args.threads, cfg["seed"])
    processor, model = load_processor(args.model), load_model(args.model)
    summary = {}
    for benchmark in cfg["benchmarks"]:
        rows = read_parquet_rows(args.data / f"{benchmark}.parquet", RL_COLUMNS)
        accs, formats, perceptions = [], [], []
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
                perceptions.append(perception(text, row["extra_info"]["scene"]))
        scoring = cfg["scoring"][benchmark]
        raw = lmms_eval_result(scoring["tasks"][0], scoring["metric"], accs, formats)
        result = benchmark_record(benchmark, scoring, raw)
        result["perception"] = 100 * sum(perceptions) / len(perceptions)
        result["samples"] = {
            "acc": accs,
            "perception": perceptions,
            "level": [int(row["extra_info"]["level"]) for row in rows],
        }
        write_json_atomic(args.out / f"{benchmark}.json", result)
        summary[benchmark] = result["score"]
        print(
            f"{benchmark}: {result['score']:.1f}, perception {result['perception']:.1f}"
            f" ({len(rows)} samples, {time.time() - started:.1f} s so far)",
            flush=True,
        )
    write_manifest(
        args.out / MANIFEST,
        "eval",
        [f"{args.model}/{MANIFEST}", f"{args.data}/{MANIFEST}"],
        cfg,
        summary | {"peak_memory": peak_memory_per_rank([peak_memory()])},  # one process: one rank
        started,
    )
