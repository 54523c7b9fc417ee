"""Fetch the benchmarks' data sets once: `python -m prism.eval.fetch --config JSON --out DIR`, in lmms-eval's
environment, on a machine with internet (a local rule).

lmms-eval downloads a task's data set when it builds the task, so left to itself every evaluation job
would download all seven benchmarks again, on compute nodes that often have no internet. Here our task
variants are built once by lmms-eval itself, online, which fills a cache under `paths.hf_cache`; the
evaluation jobs read that cache offline (`benchmark_environment`), so they load exactly what was fetched
and never reach the Hub. The manifest, written last, lists each task's data set, split and row count.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from prism.core.config import parse_slice
from prism.core.manifest import MANIFEST, write_manifest


def benchmark_environment(cache: Path, offline: bool) -> dict[str, str]:
    """The variables that point lmms-eval and the Hugging Face libraries at the benchmark cache; offline, they
    may read it only. LMMS_EVAL_DATASETS_CACHE is used as given, where lmms-eval would swap a datasets cache
    on a network file system for an empty node-local one."""
    env = {"LMMS_EVAL_DATASETS_CACHE": str(cache / "datasets"), "HF_HUB_CACHE": str(cache / "hub")}
    if offline:
        env |= {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return env


def task_facts(task) -> dict:
    """Which data set a built task read, and how many rows its evaluation split has."""
    split = task.config.test_split
    return {
        "dataset": task.DATASET_PATH,
        "config": task.DATASET_NAME,
        "split": split,
        "rows": len(task.dataset[split]),
    }


def fetch(tasks_by_benchmark: dict[str, list[str]], out: Path) -> dict:
    """Build every task with lmms-eval, which downloads its data set into the cache under `out`."""
    os.environ.update(benchmark_environment(out, offline=False))  # before the libraries read them
    from lmms_eval.tasks import TaskManager, get_task_dict

    from prism.eval.lmms_tasks import write_tasks

    tasks = sorted({task for names in tasks_by_benchmark.values() for task in names})
    manager = TaskManager(include_path=str(write_tasks(tasks, out / "tasks")))
    facts = {}
    for benchmark, names in tasks_by_benchmark.items():
        print(f"fetch: {benchmark}: building {', '.join(names)}", flush=True)
        try:
            built = get_task_dict(names, manager)
        except Exception as err:  # lmms-eval, datasets and the Hub client raise many kinds for one failure
            reason = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
            sys.exit(
                f"fetch: {benchmark}: lmms-eval could not load the data sets of {names} ({reason}). No "
                "manifest was written; check the network and HF_TOKEN (some tasks ask for one), then rerun: "
                f"what was downloaded stays in {out}."
            )
        facts[benchmark] = {name: task_facts(built[name]) for name in names}
        print(f"fetch: {benchmark}: {json.dumps(facts[benchmark])}", flush=True)
    return facts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m prism.eval.fetch", description=__doc__)
    parser.add_argument("--config", required=True, help="JSON: {benchmark: [lmms-eval task, ...]}")
    parser.add_argument("--out", required=True, type=Path, help="the cache; its manifest is written last")
    args = parser.parse_args(argv)
    spec, started = parse_slice(args.config), time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    facts = fetch(spec, args.out.resolve())
    write_manifest(args.out / MANIFEST, "fetch_benchmarks", [], spec, facts, started)


if __name__ == "__main__":
    main()
