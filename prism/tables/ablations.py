"""The paper's ablation table from the ablation rows' benchmark JSONs, a target of its own so that the
main table never waits on the ablation chains:

`python -m prism.tables.ablations --config JSON --eval-root results/eval --out results/tables`

Writes ablations.csv in the layout of the paper's ablation table and ablations_vs_paper.csv (each cell
beside the published number). A missing score leaves its cell empty, never zero.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from prism.core.config import BENCHMARKS, parse_slice
from prism.tables.__main__ import average, cell, read_score, write_csv


def ablation_tables(ablations: dict, benchmarks: list[str], eval_root: Path, columns: list[str]):
    """The ablation rows (setting, the variant measuring it) of one policy, ours and beside the paper's."""
    policy, missing = ablations["policy"], []
    with Path(ablations["paper_results"]).open() as handle:
        paper = {(r["model"], r["setting"]): r for r in csv.DictReader(handle)}
    ours = [["model", "setting", "variant", *columns]]
    versus = [["model", "setting", "benchmark", "ours", "paper", "diff"]]
    for setting, variant in ablations["rows"]:
        scores = []
        for benchmark in benchmarks:
            path = eval_root / policy["name"] / variant / f"{benchmark}.json"
            scores.append(read_score(path))
            if scores[-1] is None:
                missing.append(f"ablation {setting!r} {BENCHMARKS[benchmark]}: no score in {path}")
        values = dict(zip(columns, [*scores, average(scores)], strict=True))
        ours.append(
            [policy["paper_name"] or policy["name"], setting, variant, *(cell(values[c]) for c in columns)]
        )
        published = paper.get((policy["paper_name"], setting), {})
        for column in columns:
            theirs = float(published[column]) if published.get(column) else None
            diff = None if values[column] is None or theirs is None else values[column] - theirs
            versus.append([policy["name"], setting, column, cell(values[column]), cell(theirs), cell(diff)])
    return ours, versus, missing


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m prism.tables.ablations", description=__doc__)
    parser.add_argument("--config", required=True, type=parse_slice, help="the rule's config slice, JSON")
    parser.add_argument("--eval-root", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    cfg = args.config
    columns = [BENCHMARKS[b] for b in cfg["benchmarks"]] + ["Avg"]
    ours, versus, missing = ablation_tables(cfg, cfg["benchmarks"], args.eval_root, columns)
    for line in missing:
        print(f"warning: {line}; its cell and the row's Avg stay empty", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "ablations.csv", ours)
    write_csv(args.out / "ablations_vs_paper.csv", versus)
    print((args.out / "ablations.csv").read_text())


if __name__ == "__main__":
    main()
