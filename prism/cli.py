"""`prism` command line: `prism plan [--configfile FILE] [TARGET ...]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

WORKFLOW_DIR = Path(__file__).resolve().parent.parent


def plan(args) -> None:
    from snakemake.exceptions import WorkflowError

    from prism.cluster.plan import plan_jobs, summarize

    try:
        jobs = plan_jobs(args.directory, args.configfile, args.targets, forceall=args.forceall)
    except WorkflowError as err:
        sys.exit(f"prism plan: {err}")
    if not jobs:
        print("Nothing to be done: every target is up to date.")
        return
    print(summarize(jobs))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="prism", description="PRISM pipeline tools")
    commands = parser.add_subparsers(dest="command", required=True)
    plan_parser = commands.add_parser("plan", help="jobs per stage with GPUs, nodes and GPU-hours")
    plan_parser.add_argument("targets", nargs="*", default=["results/tables/main.csv"])
    plan_parser.add_argument("--configfile", action="append", default=[], help="e.g. config/tiny.yaml")
    plan_parser.add_argument("--forceall", action="store_true", help="every job, also those up to date")
    plan_parser.add_argument("--directory", default=str(WORKFLOW_DIR), help="the workflow directory")
    plan_parser.set_defaults(run=plan)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
