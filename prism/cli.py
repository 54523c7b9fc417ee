"""`prism` command line: `prism plan|preflight [--configfile FILE] [TARGET ...]`, `prism clean --work`."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import sys
from pathlib import Path

WORKFLOW_DIR = Path(__file__).resolve().parent.parent


def main_table(args) -> list[str]:
    """The targets given, or the main table under the config's results path (tiny: tiny/results)."""
    if args.targets:
        return args.targets
    from prism.cluster.preflight import read_config

    results = read_config(Path(args.directory), args.configfile)[0].get("paths", {}).get("results", "results")
    return [f"{results}/tables/main.csv"]


def plan(args) -> None:
    from snakemake.exceptions import WorkflowError

    from prism.cluster.memory import calibration, calibration_table, estimates, table
    from prism.cluster.plan import plan_jobs, summarize
    from prism.cluster.preflight import read_config
    from prism.core.config import load_config

    try:
        # a calibration compares every job of the plan, also those the finished run made up to date
        forceall = args.forceall or args.calibrate is not None
        jobs = plan_jobs(args.directory, args.configfile, main_table(args), forceall=forceall)
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
        print(
            f"\nMeasured in {args.calibrate} (Snakemake's benchmark files; GPU peak: torch's allocated peak "
            "in verl's metrics and the trainers' manifests; GPU used: NVML's memory in use per GPU while an "
            "evaluation's vLLM ran; rank RSS: the largest rank's, or evaluation child's, host peak):"
        )
        print(calibration_table(jobs, measured, stages))


def preflight(args) -> None:
    from prism.cluster.preflight import preflight as check

    problems = check(Path(args.directory), args.configfile, main_table(args), args.workflow_profile)
    if problems:
        listed = "\n".join(f"  - {problem}" for problem in problems)
        sys.exit(f"prism preflight: {len(problems)} problem(s) to fix before submitting:\n{listed}")
    print("prism preflight: cluster settings, memory estimates, disk space and tokens are in order.")


STATE_DIR = re.compile(r"[0-9a-f]{16}")


def resumable_state(jobs) -> tuple[Path, set[Path]]:
    """The work root, and the state directory each job of the DAG would resume: named by its config
    slice, its inputs' manifests and its code (prism.core.training.fingerprint). A job whose inputs are
    still to be built can resume none: they get new manifests."""
    from prism.core.config import load_config
    from prism.core.manifest import MANIFEST
    from prism.core.training import fingerprint

    resumable = set()
    for job in jobs:
        params = dict(job.params.items())
        if "work" not in params:
            continue
        inputs = [Path(f).parent for f in job.input if Path(f).name == MANIFEST]
        if all((directory / MANIFEST).is_file() for directory in inputs):
            config = json.loads(shlex.split(params["config"])[0])
            resumable.add(Path(params["work"]) / fingerprint(config, inputs, params["code"]))
    config = jobs[0].rule.workflow.config if jobs else {}
    return Path(load_config(config).paths.work), resumable


def state_dirs(root: Path) -> list[Path]:
    """Every job state directory under `root` (a directory named by a fingerprint)."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_dir()):
        if STATE_DIR.fullmatch(path.name) and not any(path.is_relative_to(f) for f in found):
            found.append(path)
    return found


def clean(args) -> None:
    from snakemake.exceptions import WorkflowError

    from prism.cluster.plan import with_dag_jobs

    directory = Path(args.directory)
    try:
        work, resumable = with_dag_jobs(directory, args.configfile, args.targets, True, resumable_state)
    except WorkflowError as err:
        sys.exit(f"prism clean: {err}")
    stale = [path for path in state_dirs(directory / work) if path.relative_to(directory) not in resumable]
    if not stale:
        print(f"prism clean: every state directory under {work} is one a current job resumes.")
        return
    total = 0
    for path in stale:
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        total += size
        state = "removed" if args.delete else "stale"
        print(f"{state}  {size / 1e6:10.1f} MB  {path.relative_to(directory)}")
        if args.delete:
            shutil.rmtree(path)
    verb = "removed" if args.delete else "no current job resumes"
    print(f"prism clean: {len(stale)} state directories, {total / 1e6:.1f} MB: {verb}.")
    if not args.delete:
        print("Nothing was removed; run `prism clean --work --delete` to remove them.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="prism", description="PRISM pipeline tools")
    commands = parser.add_subparsers(dest="command", required=True)
    plan_parser = commands.add_parser("plan", help="jobs per stage with GPUs, nodes, GPU-hours and memory")
    plan_parser.add_argument("targets", nargs="*", help="default: the config's results/tables/main.csv")
    plan_parser.add_argument("--configfile", action="append", default=[], help="e.g. config/tiny.yaml")
    plan_parser.add_argument("--forceall", action="store_true", help="every job, also those up to date")
    plan_parser.add_argument("--directory", default=str(WORKFLOW_DIR), help="the workflow directory")
    plan_parser.add_argument(
        "--calibrate", metavar="DIR", help="a finished run's workflow directory: measured hours, memory"
    )
    plan_parser.set_defaults(run=plan)
    check_parser = commands.add_parser("preflight", help="check cluster settings, memory, disk, tokens first")
    check_parser.add_argument("targets", nargs="*", help="default: the config's results/tables/main.csv")
    check_parser.add_argument("--configfile", action="append", default=[], help="e.g. config/tiny.yaml")
    check_parser.add_argument("--workflow-profile", help="the profile you submit with, e.g. profiles/slurm")
    check_parser.add_argument("--directory", default=str(WORKFLOW_DIR), help="the workflow directory")
    check_parser.set_defaults(run=preflight)
    clean_parser = commands.add_parser("clean", help="list (or remove) work state no current job resumes")
    clean_parser.add_argument("--work", action="store_true", required=True, help="the work/ state of jobs")
    clean_parser.add_argument("--delete", action="store_true", help="remove them (default: only list)")
    clean_parser.add_argument("targets", nargs="*", default=[], help="default: the workflow's targets")
    clean_parser.add_argument("--configfile", action="append", default=[], help="e.g. config/tiny.yaml")
    clean_parser.add_argument("--directory", default=str(WORKFLOW_DIR), help="the workflow directory")
    clean_parser.set_defaults(run=clean)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
