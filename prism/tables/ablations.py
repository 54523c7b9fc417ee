"""The paper's ablation table from the ablation rows' benchmark JSONs, a target of its own so that the
main table never waits on the ablation chains:

`python -m prism.tables.ablations --config JSON --eval-root results/eval --out results/tables`

Writes ablations.csv in the layout of the paper's ablation table and ablations_vs_paper.csv (each cell
beside the published number). A missing score leaves its cell empty, never zero.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prism.core.config import BENCHMARKS
from prism.core.training import parse_slice
from prism.tables.__main__ import ablation_tables, write_csv


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
