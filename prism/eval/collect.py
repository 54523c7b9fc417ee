"""One model variant's benchmark records side by side, where the tables read them:
`python -m prism.eval.collect --benchmarks DIR ... --out DIR`, each DIR one benchmark's evaluation job."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from prism.core.manifest import MANIFEST, write_json_atomic, write_manifest


def collect(benchmark_dirs: list[Path], out: Path) -> dict[str, float]:
    started, scores = time.time(), {}
    out.mkdir(parents=True, exist_ok=True)
    for directory in benchmark_dirs:
        record = json.loads((directory / f"{directory.name}.json").read_text())
        write_json_atomic(out / f"{directory.name}.json", record)
        scores[directory.name] = record["score"]
    inputs = [directory / MANIFEST for directory in benchmark_dirs]
    write_manifest(out / MANIFEST, "eval", inputs, {"benchmarks": sorted(scores)}, scores, started)
    return scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m prism.eval.collect", description=__doc__)
    parser.add_argument("--benchmarks", nargs="+", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="the variant's directory; manifest last")
    args = parser.parse_args(argv)
    collect(args.benchmarks, args.out)


if __name__ == "__main__":
    main()
