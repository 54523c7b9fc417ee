"""`prism` command line: `prism plan|preflight [--configfile FILE] [TARGET ...]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

WORKFLOW_DIR = Path(__file__).resolve().parent.parent


def plan(args) -> None:
    from snakemake.exceptions import WorkflowError

    from prism.cluster.memory import calibration, calibration_table, estimates, table
    from prism.cluster.plan import plan_jobs, summarize
    from prism.cluster.preflight import read_config
    from prism.core.config import load_config

    try:
        # a calibration compares every job of the plan, also those the finished run made up to date
        forceall = args.forceall or args.calibrate is not None
        jobs = plan_jobs(args.directory, args.configfile, args.targets, forceall=forceall)
    except WorkflowError as err:
        sys.exit(f"prism plan: {err}")
    if not jobs:
        print("Nothing to be done: every target is up to date.")
        return
    cfg = load_config(read_config(Path(args.directory), args.configfile)[0])  # valid: the DAG read it
    stages = estimates(cfg, Path(args.directory), jobs)
    print(summarize(jobs, stages))
    if stages:
        print("\n" + table(stages, cfg.cluster.gpu_memory_gb, {j.rule: j.mem_mb for j in jobs}))
    if args.calibrate is not None:
        measured = calibration(jobs, Path(args.calibrate))
        if not measured:
            sys.exit(f"prism plan: no benchmark records of these jobs under {args.calibrate}")
        print(f"\nMeasured in {args.calibrate} (Snakemake's benchmark files; GPU peak: verl's metrics):")
        print(calibration_table(jobs, measured, stages))


def preflight(args) -> None:
    from prism.cluster.preflight import preflight as check

    problems = check(Path(args.directory), args.configfile, args.targets, args.workflow_profile)
    if problems:
        listed = "\n".join(f"  - {problem}" for problem in problems)
        sys.exit(f"prism preflight: {len(problems)} problem(s) to fix before submitting:\n{listed}")
    print("prism preflight: cluster settings, memory estimates, disk space and tokens are in order.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="prism", description="PRISM pipeline tools")
    commands = parser.add_subparsers(dest="command", required=True)
    plan_parser = commands.add_parser("plan", help="jobs per stage with GPUs, nodes, GPU-hours and memory")
    plan_parser.add_argument("targets", nargs="*", default=["results/tables/main.csv"])
    plan_parser.add_argument("--configfile", action="append", default=[], help="e.g. config/tiny.yaml")
    plan_parser.add_argument("--forceall", action="store_true", help="every job, also those up to date")
    plan_parser.add_argument("--directory", default=str(WORKFLOW_DIR), help="the workflow directory")
    plan_parser.add_argument(
        "--calibrate", metavar="DIR", help="a finished run's workflow directory: measured hours, memory"
    )
    plan_parser.set_defaults(run=plan)
    check_parser = commands.add_parser("preflight", help="check cluster settings, memory, disk, tokens first")
    check_parser.add_argument("targets", nargs="*", default=["results/tables/main.csv"])
    check_parser.add_argument("--configfile", action="append", default=[], help="e.g. config/tiny.yaml")
    check_parser.add_argument("--workflow-profile", help="the profile you submit with, e.g. profiles/slurm")
    check_parser.add_argument("--directory", default=str(WORKFLOW_DIR), help="the workflow directory")
    check_parser.set_defaults(run=preflight)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
