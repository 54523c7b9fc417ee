"""lmms-eval's results, whatever it named the file, as our fixed per-benchmark record.

lmms-eval writes `<output_path>[/<model>]/<date>_results.json` with `results[task]["<metric>,<filter>"]`
and `n-samples[task]` (integration-reference §5.2). Which task(s) and metric feed a paper column, and the
metric's scale, come from `eval.scoring` in the config; a column fed by several tasks (MMMU-Pro's vision
and standard settings) is their unweighted mean.
"""

from __future__ import annotations

import json
from pathlib import Path

from prism.core.errors import InputError


class ResultsError(InputError):
    """lmms-eval left no usable result for a benchmark; the message says what was found instead."""


def results_file(output_path: Path) -> Path:
    """The newest `*_results.json` lmms-eval wrote under `output_path` (it nests one folder per model)."""
    found = sorted(output_path.rglob("*_results.json"), key=lambda p: (p.stat().st_mtime, p.name))
    if not found:
        raise ResultsError(f"{output_path}: lmms-eval wrote no *_results.json")
    return found[-1]


def metric_value(results: dict, task: str, metric: str) -> float:
    entry = results.get("results", {}).get(task)
    if entry is None:
        raise ResultsError(f"no results for task {task!r}; the file has {sorted(results.get('results', {}))}")
    key = metric if "," in metric else f"{metric},none"
    value = entry.get(key)
    if not isinstance(value, int | float):
        metrics = sorted(k for k in entry if "," in k and "_stderr" not in k)
        raise ResultsError(f"task {task!r} has no numeric {key!r}; its metrics are {metrics}")
    return float(value)


def benchmark_record(benchmark: str, scoring: dict, results: dict, source: str = "") -> dict:
    """{score 0-100, metric, tasks, per-task values, sample counts, raw results} for one benchmark."""
    tasks, metric, scale = scoring["tasks"], scoring["metric"], scoring["scale"]
    values = {task: metric_value(results, task, metric) for task in tasks}
    score = scale * sum(values.values()) / len(values)
    if not 0 <= score <= 100:
        raise ResultsError(
            f"{benchmark}: {metric} gives {score:.4g} after scaling by {scale}, outside 0-100; "
            "check eval.scoring.<benchmark>.scale (fractions need 100, percentages 1)"
        )
    samples = results.get("n-samples", {})
    return {
        "benchmark": benchmark,
        "tasks": tasks,
        "metric": metric if "," in metric else f"{metric},none",
        "scale": scale,
        "score": score,
        "per_task": values,
        "n_samples": {task: samples.get(task, {}) for task in tasks},
        "results_file": source,
        "lmms_eval": results,
    }


def normalise(benchmark: str, scoring: dict, output_path: Path) -> dict:
    path = results_file(output_path)
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ResultsError(f"{path}: not valid JSON ({err})") from None
    return benchmark_record(benchmark, scoring, results, str(path))
