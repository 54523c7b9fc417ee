"""What a change reruns, with Snakemake's own rerun triggers on a copy of the tiny DAG whose every output
exists and is recorded as built by the current code (`snakemake --touch`): an edit that changes no
behaviour reruns nothing, a behaviour edit reruns the jobs whose code holds it, and a rerun trains anew."""

import contextlib
import csv
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from snakemake.utils import update_config

from conftest import ROOT, copy_workflow, load_yaml, snakemake, write_config
from prism.core.closure import closure, code_fingerprint, stage_roots
from prism.core.config import load_config
from prism.core.training import fingerprint
from prism.data.__main__ import main as make_data

TINY = ("--configfile", "config/tiny.yaml")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The tiny workflow with every output in place and Snakemake's records of the code that made it."""
    workdir = copy_workflow(tmp_path_factory.mktemp("reruns") / "workflow")
    summary = snakemake(workdir, "--summary", *TINY)
    assert summary.returncode == 0, summary.stderr[-3000:]
    for line in summary.stdout.splitlines()[1:]:
        output = workdir / line.split("\t")[0]
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("{}")
    touched = snakemake(workdir, "--touch", "--forceall", "--cores", "1", *TINY)
    assert touched.returncode == 0, touched.stderr[-3000:]
    return workdir


def planned(workdir: Path, *args: str) -> tuple[Counter, str]:
    """Jobs per rule that `snakemake -n` would run, and its output (which names each job's reason)."""
    result = snakemake(workdir, "-n", *TINY, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = Counter()
    in_table = False
    for line in result.stdout.splitlines():
        fields = line.split()
        if fields[:2] == ["job", "count"]:
            in_table = True
        elif in_table and len(fields) == 2 and fields[1].isdigit() and fields[0] != "total":
            counts[fields[0]] = int(fields[1])
        elif in_table and fields[:1] == ["total"]:
            break
    return counts, result.stdout


@contextlib.contextmanager
def edited(path: Path, transform):
    """`path` rewritten (or created) for the duration, then restored."""
    original = path.read_text() if path.exists() else None
    path.write_text(transform(original or ""))
    try:
        yield
    finally:
        if original is None:
            path.unlink()
        else:
            path.write_text(original)


def test_the_accepted_copy_is_up_to_date(built):
    assert planned(built)[0] == Counter()


def test_comments_docstrings_formatting_and_an_unused_module_rerun_nothing(built):
    prism = built / "prism"
    with (
        edited(prism / "core" / "advantages.py", lambda s: "# why this estimator\n" + s),
        edited(prism / "core" / "reward.py", lambda s: s.replace("\n\n\ndef ", "\n\n\n# a note\ndef ", 1)),
        edited(prism / "data" / "prepare.py", lambda s: s.replace('"""', '"""Reworded. ', 1)),
        edited(prism / "rl" / "cpu.py", lambda s: s.replace("\n\n\n", "\n\n\n\n", 1)),
        edited(prism / "core" / "unused.py", lambda s: "VALUE = 1\n"),
    ):
        counts, _ = planned(built)
    assert counts == Counter()


def test_a_behaviour_edit_reruns_exactly_the_jobs_whose_code_holds_it(built):
    reward = built / "prism" / "core" / "reward.py"
    with edited(reward, lambda s: s.replace("MAX_ANSWER_CHARS = 1024", "MAX_ANSWER_CHARS = 2048")):
        counts, output = planned(built)
    # the RL reward, the answer accuracy the CPU alignment logs and the CPU evaluator's scoring: the
    # alignment, every RL run, every evaluation, the main table; not the discriminator's jobs
    assert set(counts) == {"align", "rl", "evaluate", "tables", "all"}
    assert counts["align"] == 1 and counts["rl"] == 6 and counts["evaluate"] == 9
    assert "Params have changed since last execution" in output
    trainer = built / "prism" / "verl" / "align_trainer.py"  # the GPU engine: not what tiny mode runs
    with edited(trainer, lambda s: s + "\nUNUSED_ON_CPU = 1\n"):
        assert planned(built)[0] == Counter()


def test_a_failure_threshold_or_a_resource_size_reruns_nothing(built):
    overlay = {
        "data": {"max_rejected_fraction": 0.05},
        "sft": {"resources": {"gpus": 2, "hours": 0.2}},
        "rl": {"resources": {"cpus_per_task": 1, "mem_mb": 3000}},
    }
    changed = write_config(built, "changed.yaml", overlay)
    assert planned(built, "--configfile", "config/tiny.yaml", changed)[0] == Counter()


PARAMS_OF_PAPER_JOBS = """
from prism.cluster.plan import with_dag_jobs
jobs = with_dag_jobs(".", [], [], True, lambda jobs: [(j.rule.name, dict(j.params.items())) for j in jobs])
print({rule: params.get("code") for rule, params in jobs})
"""


def test_downloads_depend_on_no_project_code_and_each_stage_on_its_engines():
    result = subprocess.run(
        [sys.executable, "-c", PARAMS_OF_PAPER_JOBS], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    code = eval(result.stdout.strip().splitlines()[-1])
    assert code["fetch_model"] == code["fetch_dataset"] == ""
    assert code["prepare_dataset"] == code_fingerprint(stage_roots("prism.data"))
    assert code["rl"] == code_fingerprint(stage_roots("prism.rl", "verl"))
    modules = closure(stage_roots("prism.rl", "verl"))[0]
    assert "prism.verl.reward" in modules  # named as verl's reward function, not imported
    assert "prism.rl.cpu" not in modules
    assert "prism.verl.run" not in closure(stage_roots("prism.rl", "cpu"))[0]


@pytest.fixture(scope="module")
def rl_inputs(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("rl-inputs")
    spec = {"source": "synthetic", "synthetic": {"examples": 8, "seed": 0}}
    make_data(["dataset", "--name", "rl", "--config", json.dumps(spec), "--out", str(root / "rl")])
    return root / "rl"


def test_a_rerun_after_a_behaviour_change_trains_from_step_0(tiny_dir, rl_inputs, tmp_path):
    package = tmp_path / "code"
    shutil.copytree(ROOT / "prism", package / "prism", ignore=shutil.ignore_patterns("__pycache__"))
    merged = load_yaml("config.yaml")
    update_config(merged, load_yaml("tiny.yaml"))
    config = {**load_config(merged).rl.job_slice("grpo"), "steps": 2, "prompts_per_step": 2}
    config.update(rollouts_per_prompt=2, max_response_length=8)
    out, work = tmp_path / "rl", tmp_path / "work"

    def train() -> str:
        command = [sys.executable, "-m", "prism.rl", "--config", json.dumps(config), "--model", str(tiny_dir)]
        command += ["--data", str(rl_inputs), "--out", str(out), "--work", str(work)]
        run = subprocess.run(command, cwd=package, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        with (out / "metrics.csv").open() as handle:
            steps = [int(row["step"]) for row in csv.DictReader(handle)]
        assert steps == [1, 2]
        return run.stdout

    train()
    first = json.loads((out / "manifest.json").read_text())["code"]["fingerprint"]
    cpu = package / "prism" / "rl" / "cpu.py"
    cpu.write_text(cpu.read_text() + "\nBEHAVIOUR_CHANGED = True\n")
    rerun = train()
    assert "resumed from" not in rerun and "step 1/2" in rerun
    assert len(list(work.iterdir())) == 2  # the old code's state is left, never resumed
    assert json.loads((out / "manifest.json").read_text())["code"]["fingerprint"] != first


def test_prism_clean_lists_then_removes_only_state_no_current_job_resumes(built):
    merged = load_yaml("config.yaml")
    update_config(merged, load_yaml("tiny.yaml"))
    slice_ = load_config(merged).rl.job_slice("grpo")
    inputs = [built / "tiny/results/models/sft/tiny", built / "tiny/results/data/rl"]
    current = fingerprint(slice_, inputs, code_fingerprint(stage_roots("prism.rl", "cpu")))
    run_dir = built / "tiny/work/rl/tiny/sft-grpo"
    resumable = run_dir / current
    stale = [run_dir / "0123456789abcdef", built / "tiny/work/rl/tiny/sft-removed/fedcba9876543210"]
    for state in (resumable, *stale):
        state.mkdir(parents=True)
        (state / "state.pt").write_bytes(b"x" * 1000)

    def clean(*flags: str) -> str:
        command = [sys.executable, "-m", "prism.cli", "clean", "--work", *flags, "--directory", str(built)]
        command += ["--configfile", str(built / "config/tiny.yaml")]
        run = subprocess.run(command, cwd=built, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        return run.stdout

    listed = clean()
    assert all(str(s.relative_to(built)) in listed for s in stale) and current not in listed
    assert all(s.exists() for s in stale)  # a dry run by default
    clean("--delete")
    assert not any(s.exists() for s in stale) and resumable.exists()
    shutil.rmtree(built / "tiny/work")


def test_a_failure_threshold_is_recorded_in_the_manifest_not_compared(rl_inputs, tmp_path):
    settings = {"max_rejected_fraction": 0.05}
    make_data(
        ["prepare", "--name", "rl", "--config", "{}", "--settings", json.dumps(settings)]
        + ["--raw", str(rl_inputs), "--out", str(tmp_path / "rl")]
    )
    manifest = json.loads((tmp_path / "rl" / "manifest.json").read_text())
    assert manifest["settings"] == settings and manifest["config"] == {}
