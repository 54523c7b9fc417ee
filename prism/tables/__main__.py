"""Build the paper's tables from the evaluation JSONs, and the report's charts.

`python -m prism.tables --config JSON --eval-root results/eval --out results/tables [--runs DIR ...]`

Writes main.csv (policy, variant, one column per benchmark, Avg), main_vs_paper.csv (each cell beside the
published number and the difference), main_ci.csv (each cell's 95% bootstrap interval over its samples),
perception.csv (per variant, the captions' agreement with the scene beside the answers' accuracy),
differences.csv (each PRISM-initialised variant minus its SFT-initialised counterpart, paired intervals),
ours_vs_paper.svg, and curves_<stage>.svg from the metrics.csv beside each trained artifact given with
--runs. Intervals need the per-sample values a record keeps (the CPU evaluator's); without them they
stay empty. A missing score leaves its cell empty, never zero. The ablation table is
prism.tables.ablations, a target of its own.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from prism.core.config import BENCHMARKS, parse_slice
from prism.tables.figures import comparison_chart, curves_chart
from prism.tables.intervals import difference_interval, mean_interval

# What each stage's curves show, from whichever engine wrote them (the CPU loops or verl's step logs).
CURVES = {
    "sft": ["loss"],
    "discriminator": ["loss", "acc", "gap"],
    "align": [
        "caption_gap",
        "reasoning_gap",
        "perception",
        "answer_acc",
        "valid_ratio",
        "prism/disc/gap",
        "prism/format_valid_rate",
    ],
    "rl": ["reward", "acc", "critic/score/mean", "response_length/mean"],
}


# The warmed discriminator's manifest names its rule; its curves are the discriminator's.
STAGE_OF_MANIFEST = {"warmup_discriminator": "discriminator"}


def read_score(path: Path) -> float | None:
    return json.loads(path.read_text()).get("score") if path.exists() else None


def read_samples(path: Path) -> dict[str, list[float]] | None:
    """A record's per-sample values ({"acc": [...], "perception": [...]}), None where it keeps none."""
    return json.loads(path.read_text()).get("samples") if path.exists() else None


def average(values: list[float | None]) -> float | None:
    """Unweighted mean of the benchmark columns; empty when any cell is missing, never zero."""
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def cell(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def paper_numbers(path: Path) -> dict[tuple[str, str], dict[str, float]]:
    with path.open() as handle:
        return {
            (row["model"], row["variant"]): {
                k: float(v) for k, v in row.items() if v and k not in ("model", "variant")
            }
            for row in csv.DictReader(handle)
        }


def score_grid(cfg: dict, eval_root: Path) -> tuple[dict, list[str]]:
    """{(policy, variant, column): score or None} over every configured cell, Avg included, and a line
    for each missing benchmark score."""
    grid, missing = {}, []
    for policy in cfg["policies"]:
        for variant in cfg["variants"]:
            row = []
            for benchmark in cfg["benchmarks"]:
                path = eval_root / policy["name"] / variant / f"{benchmark}.json"
                score = read_score(path)
                if score is None:
                    missing.append(f"{policy['name']} {variant} {BENCHMARKS[benchmark]}: no score in {path}")
                grid[policy["name"], variant, BENCHMARKS[benchmark]] = score
                row.append(score)
            grid[policy["name"], variant, "Avg"] = average(row)
    return grid, missing


def sample_grid(cfg: dict, eval_root: Path) -> dict:
    """{(policy, variant, benchmark column): per-sample values or None} over every configured cell."""
    return {
        (policy["name"], variant, BENCHMARKS[benchmark]): read_samples(
            eval_root / policy["name"] / variant / f"{benchmark}.json"
        )
        for policy in cfg["policies"]
        for variant in cfg["variants"]
        for benchmark in cfg["benchmarks"]
    }


def cell_intervals(cfg: dict, samples: dict, measure: str) -> dict:
    """{(policy, variant, column): (low, high)} of `measure` per benchmark and over the row's average."""
    columns = [BENCHMARKS[b] for b in cfg["benchmarks"]]
    out = {}
    for policy in cfg["policies"]:
        for variant in cfg["variants"]:
            row = [samples[policy["name"], variant, c] for c in columns]
            for column, values in zip(columns, row, strict=True):
                if values is not None:
                    out[policy["name"], variant, column] = mean_interval([values[measure]])
            if all(values is not None for values in row):
                out[policy["name"], variant, "Avg"] = mean_interval([values[measure] for values in row])
    return out


def ci_rows(cfg: dict, grid: dict, intervals: dict, columns: list[str]) -> list[list[str]]:
    rows = [["policy", "variant", "benchmark", "score", "ci_low", "ci_high"]]
    for policy in cfg["policies"]:
        for variant in cfg["variants"]:
            for column in columns:
                key = policy["name"], variant, column
                low, high = intervals.get(key, (None, None))
                rows.append([policy["name"], variant, column, cell(grid[key]), cell(low), cell(high)])
    return rows


def row_mean(samples: dict, policy: str, variant: str, columns: list[str], measure: str) -> float | None:
    row = [samples[policy, variant, c] for c in columns]
    if any(values is None for values in row):
        return None
    return 100 * sum(sum(v[measure]) / len(v[measure]) for v in row) / len(row)


def perception_rows(cfg: dict, samples: dict, columns: list[str]) -> list[list[str]]:
    """Per variant, over the benchmarks' unweighted mean: perception (the captions' count, colour and
    kind against the scene) and reasoning (the answers' accuracy, the main table's Avg), with intervals."""
    perception, reasoning = (cell_intervals(cfg, samples, m) for m in ("perception", "acc"))
    rows = [["policy", "variant", "perception", "perception_low", "perception_high"]]
    rows[0] += ["reasoning", "reasoning_low", "reasoning_high"]
    for policy in cfg["policies"]:
        for variant in cfg["variants"]:
            key = policy["name"], variant, "Avg"
            row = [policy["name"], variant]
            for measure, intervals in (("perception", perception), ("acc", reasoning)):
                low, high = intervals.get(key, (None, None))
                row += [cell(row_mean(samples, *key[:2], columns, measure)), cell(low), cell(high)]
            rows.append(row)
    return rows


def difference_rows(cfg: dict, samples: dict, columns: list[str]) -> list[list[str]]:
    """Each prism* variant minus its sft* counterpart (same RL after it), on the average of the answers'
    accuracy and of perception, with paired intervals over the shared benchmark items."""
    rows = [["policy", "variant", "versus", "measure", "diff", "ci_low", "ci_high"]]
    for policy in cfg["policies"]:
        for variant in cfg["variants"]:
            counterpart = "sft" + variant.removeprefix("prism")
            if not variant.startswith("prism") or counterpart not in cfg["variants"]:
                continue
            first = [samples[policy["name"], variant, c] for c in columns]
            second = [samples[policy["name"], counterpart, c] for c in columns]
            for measure, name in (("acc", "score"), ("perception", "perception")):
                diff = low = high = None
                if all(values is not None for values in first + second):
                    diff = row_mean(samples, policy["name"], variant, columns, measure) - row_mean(
                        samples, policy["name"], counterpart, columns, measure
                    )
                    low, high = difference_interval([v[measure] for v in first], [v[measure] for v in second])
                rows.append([policy["name"], variant, counterpart, name, cell(diff), cell(low), cell(high)])
    return rows


def main_rows(cfg: dict, grid: dict, columns: list[str]) -> list[list[str]]:
    rows = [["policy", "variant", *columns]]
    for policy in cfg["policies"]:
        for variant in cfg["variants"]:
            rows.append([policy["name"], variant, *(cell(grid[policy["name"], variant, c]) for c in columns)])
    return rows


def versus_rows(cfg: dict, grid: dict, columns: list[str], paper: dict) -> list[list[str]]:
    rows = [["policy", "variant", "benchmark", "ours", "paper", "diff"]]
    for policy in cfg["policies"]:
        for variant in cfg["variants"]:
            published = paper.get((policy["paper_name"], variant), {})
            for column in columns:
                ours, theirs = grid[policy["name"], variant, column], published.get(column)
                diff = None if ours is None or theirs is None else ours - theirs
                rows.append([policy["name"], variant, column, cell(ours), cell(theirs), cell(diff)])
    return rows


def write_csv(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)


def training_runs(run_dirs: list[Path], models_root: Path) -> dict[str, dict[str, list[dict]]]:
    """{stage: {run name: metrics rows}} of the trained artifacts (released ones have no curves)."""
    runs: dict[str, dict[str, list[dict]]] = {stage: {} for stage in CURVES}
    for directory in run_dirs:
        stage = json.loads((directory / "manifest.json").read_text())["stage"]
        stage = STAGE_OF_MANIFEST.get(stage, stage)
        curve = directory / "metrics.csv"
        if stage in runs and curve.exists():
            with curve.open() as handle:
                runs[stage][str(directory.relative_to(models_root))] = list(csv.DictReader(handle))
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m prism.tables", description=__doc__)
    parser.add_argument("--config", required=True, type=parse_slice)
    parser.add_argument("--eval-root", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--models-root", type=Path, default=Path("results/models"))
    parser.add_argument("--runs", nargs="*", type=Path, default=[], help="trained artifact directories")
    args = parser.parse_args(argv)
    cfg = args.config
    columns = [BENCHMARKS[b] for b in cfg["benchmarks"]] + ["Avg"]
    grid, missing = score_grid(cfg, args.eval_root)
    for line in missing:
        print(f"warning: {line}; its cell and the row's Avg stay empty", file=sys.stderr)
    paper = paper_numbers(Path(cfg["paper_results"]))
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "main.csv", main_rows(cfg, grid, columns))
    write_csv(args.out / "main_vs_paper.csv", versus_rows(cfg, grid, columns, paper))
    samples = sample_grid(cfg, args.eval_root)
    intervals = cell_intervals(cfg, samples, "acc")
    benchmark_columns = columns[:-1]
    write_csv(args.out / "main_ci.csv", ci_rows(cfg, grid, intervals, columns))
    write_csv(args.out / "perception.csv", perception_rows(cfg, samples, benchmark_columns))
    write_csv(args.out / "differences.csv", difference_rows(cfg, samples, benchmark_columns))
    for policy in cfg["policies"]:
        ours = {(v, c): grid[policy["name"], v, c] for v in cfg["variants"] for c in columns}
        theirs = {
            (v, c): paper.get((policy["paper_name"], v), {}).get(c) for v in cfg["variants"] for c in columns
        }
        spans = {(v, c): intervals.get((policy["name"], v, c)) for v in cfg["variants"] for c in columns}
        chart = comparison_chart(
            f"{policy['name']}: ours vs. the paper", cfg["variants"], ours, theirs, columns, spans
        )
        (args.out / f"ours_vs_paper_{policy['name']}.svg").write_text(chart)
    for stage, runs in training_runs(args.runs, args.models_root).items():
        present = [m for m in CURVES[stage] if any(m in rows[0] for rows in runs.values() if rows)]
        (args.out / f"curves_{stage}.svg").write_text(curves_chart(stage, present or CURVES[stage][:1], runs))
    print((args.out / "main.csv").read_text())


if __name__ == "__main__":
    main()
