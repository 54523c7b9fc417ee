"""Build results/tables/main.csv and main_vs_paper.csv from the evaluation JSONs.

`python -m prism.tables --config JSON --eval-root results/eval --out results/tables`
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from prism.core.config import BENCHMARKS
from prism.core.training import parse_slice


def read_scores(eval_root: Path, policy: str, variant: str, benchmarks: list[str]) -> dict[str, float | None]:
    scores = {}
    for benchmark in benchmarks:
        path = eval_root / policy / variant / f"{benchmark}.json"
        scores[benchmark] = json.loads(path.read_text())["score"] if path.exists() else None
    return scores


def average(values: list[float | None]) -> float | None:
    """Unweighted mean of the benchmark columns; empty when any cell is missing, never zero."""
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def cell(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def paper_numbers(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with path.open() as handle:
        return {(row["model"], row["variant"]): row for row in csv.DictReader(handle)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m prism.tables", description=__doc__)
    parser.add_argument("--config", required=True, type=parse_slice)
    parser.add_argument("--eval-root", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    cfg = args.config
    columns = [BENCHMARKS[b][0] for b in cfg["benchmarks"]]
    paper = paper_numbers(Path(cfg["paper_results"]))
    main_rows, versus_rows = [], []
    for policy in cfg["policies"]:
        for variant in cfg["variants"]:
            scores = read_scores(args.eval_root, policy["name"], variant, cfg["benchmarks"])
            ours = [*scores.values(), average(list(scores.values()))]
            main_rows.append([policy["name"], variant, *map(cell, ours)])
            published = paper.get((policy["paper_name"], variant), {})
            for column, value in zip([*columns, "Avg"], ours, strict=True):
                theirs = float(published[column]) if published.get(column) else None
                diff = None if value is None or theirs is None else value - theirs
                versus_rows.append([policy["name"], variant, column, cell(value), cell(theirs), cell(diff)])
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "main.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["policy", "variant", *columns, "Avg"], *main_rows])
    with (args.out / "main_vs_paper.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(
            [["policy", "variant", "benchmark", "ours", "paper", "diff"], *versus_rows]
        )
    print((args.out / "main.csv").read_text())


if __name__ == "__main__":
    main()
