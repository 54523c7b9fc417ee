"""Shared fixtures: configs as Snakemake would merge them, and throw-away copies of the workflow."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config

import prism  # noqa: F401  (before torch loads: it makes torch's idle OpenMP threads wait passively)

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW_FILES = ("Snakefile", "rules", "config", "profiles", "envs", "prism", "report")
TINY = ["--configfile", "config/tiny.yaml"]
# The tiny run's targets: the main table (the default target) and the ablation table, which has its own.
# Targets go before TINY: --configfile takes every argument up to the next option.
TARGETS = ["all", "tiny/results/tables/ablations.csv"]
# The test cluster has no slurmdbd, so Snakemake polls squeue instead of the profile's default sacct, and
# starts 2 s after a submission instead of 40 so that the short tiny jobs are not waiting on the poll.
# Conda channels are unreachable here, so the jobs run in the test venv instead of the profile's conda envs
# (env-modules deploys nothing: no rule names a module).
TEST_CLUSTER = [
    *["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2"],
    *["--software-deployment-method", "env-modules"],
]


def load_yaml(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / name).read_text())


def merged_tiny_config() -> dict:
    merged = copy.deepcopy(load_yaml("config.yaml"))
    update_config(merged, load_yaml("tiny.yaml"))
    return merged


@pytest.fixture
def paper_config() -> dict:
    return load_yaml("config.yaml")


@pytest.fixture
def tiny_config() -> dict:
    return merged_tiny_config()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen3-VL with its tokenizer and processor, as tiny mode's fetch_model builds it."""
    from prism.core.config import TinyModel
    from prism.data.__main__ import main as make_data

    path = tmp_path_factory.mktemp("tiny")
    spec = {"source": "tiny", "tiny": TinyModel(hidden_size=64, intermediate_size=96, seed=3).model_dump()}
    make_data(["model", "--name", "tiny", "--config", json.dumps(spec), "--out", str(path)])
    return path


@pytest.fixture(scope="session")
def disc_dir(tiny_dir, tmp_path_factory) -> Path:
    """A warmed-up dense discriminator as our warmup stage saves it: head in value_head.safetensors,
    processor beside it."""
    import torch

    from prism.core.modeling import load_model, load_processor, save_processor
    from prism.discriminator.model import Discriminator

    path = tmp_path_factory.mktemp("disc")
    torch.manual_seed(0)
    Discriminator(load_model(str(tiny_dir)), dropout=0.1).save(path)
    save_processor(load_processor(str(tiny_dir)), tiny_dir, path)
    return path


def copy_workflow(target: Path) -> Path:
    """A copy of the workflow to run in, so tests never write results or .snakemake into the repo."""
    target.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, target / name)
    return target


@pytest.fixture
def workflow_copy(tmp_path) -> Path:
    return copy_workflow(tmp_path / "workflow")


def snakemake_process(workdir: Path, args: tuple[str, ...], env: dict | None) -> tuple[list[str], dict]:
    """The command and environment that run Snakemake in `workdir` as a user would: jobs run
    `python -m prism...` with the interpreter running the tests, and the workflow copy's package."""
    env = dict(os.environ, **(env or {}), PYTHONPATH=str(workdir))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return [str(Path(sys.executable).with_name("snakemake")), *args], env


def snakemake(
    workdir: Path, *args: str, timeout: int = 900, env: dict | None = None
) -> subprocess.CompletedProcess:
    command, env = snakemake_process(workdir, args, env)
    return subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env)


def slurm_unavailable(reason: str):
    if os.environ.get("PRISM_REQUIRE_SLURM") == "1":
        pytest.fail(f"PRISM_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory) -> Path:
    """A one-node Slurm offering the partition and GPUs the tiny config names (tests/slurm/start.sh).

    Skipped where it cannot start (not root, no apt-get); PRISM_REQUIRE_SLURM=1 (set by CI) fails instead."""
    if os.geteuid() != 0:
        slurm_unavailable("the test Slurm runs its daemons as root")
    state = tmp_path_factory.mktemp("slurm")
    offer = merged_tiny_config()["cluster"]
    env = dict(
        os.environ,
        SLURM_PARTITION=offer["partition"],
        SLURM_GPU_TYPE=offer["gpu_model"],
        SLURM_GPUS=str(offer["gpus_per_node"]),
    )
    stop = ["bash", str(ROOT / "tests/slurm/stop.sh"), str(state)]
    start = time.time()
    started = subprocess.run(
        ["bash", str(ROOT / "tests/slurm/start.sh"), str(state)], env=env, capture_output=True, text=True
    )
    if started.returncode != 0:
        subprocess.run(stop, capture_output=True)
        slurm_unavailable(f"Slurm could not start: {started.stderr.strip()[-1500:]}")
    print(f"Slurm up in {time.time() - start:.1f} s: {started.stdout.strip()}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_CONF", str(state / "etc/slurm.conf"))
        yield state
    subprocess.run(stop, check=True, capture_output=True)


TINY_RUN_READ = pytest.StashKey[bool]()


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected what will not run
def pytest_collection_modifyitems(config, items):
    """Test files that read the tiny run go last, and those that use the test Slurm without it after them:
    the run starts with the session (`tiny_run_started`) and builds beside the tests before them, then
    leaves the test Slurm to the Slurm-only tests."""
    reads, uses_slurm = set(), set()
    for item in items:
        if "tiny_run" in item.fixturenames:
            reads.add(item.path)
        elif "slurm" in item.fixturenames:
            uses_slurm.add(item.path)
    items.sort(key=lambda item: 1 if item.path in reads else 2 if item.path in uses_slurm else 0)
    config.stash[TINY_RUN_READ] = bool(reads)


class TinyRun:
    """The one complete tiny run of a session, built in the background: submitted through the test Slurm
    with the project's Slurm profile where Slurm runs, as in CI, else with the local profile. The jobs see
    marker secrets, which the tests then look for in what the run wrote."""

    TIMEOUT = 2700

    def __init__(self, request, tmp_path_factory):
        try:
            request.getfixturevalue("slurm")
            self.profile = ["--workflow-profile", "profiles/slurm", *TEST_CLUSTER]
        except pytest.skip.Exception:
            self.profile = ["--workflow-profile", "profiles/local"]
        self.workdir = copy_workflow(tmp_path_factory.mktemp("tiny-run"))
        command, env = snakemake_process(self.workdir, (*TARGETS, *self.profile, *TINY), SECRETS)
        self.log = self.workdir.with_suffix(".log")
        self.started = time.time()
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                command, cwd=self.workdir, env=env, stdout=log, stderr=log, start_new_session=True
            )

    def finished(self) -> Path:
        """The run's workflow directory, once Snakemake has built every target."""
        try:
            code = self.process.wait(timeout=max(1, self.TIMEOUT - (time.time() - self.started)))
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"the tiny run took over {self.TIMEOUT} s: {self.log.read_text()[-3000:]}")
        assert code == 0, self.log.read_text()[-6000:]
        print(f"tiny pipeline with {self.profile[1]}: {time.time() - self.started:.0f} s")
        return self.workdir

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)  # as Ctrl-C: Snakemake cancels the jobs it submitted
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture(scope="session", autouse=True)
def tiny_run_started(request, tmp_path_factory):
    """Starts the tiny run with the session where a selected test reads it."""
    run = TinyRun(request, tmp_path_factory) if request.config.stash.get(TINY_RUN_READ, False) else None
    yield run
    if run is not None:
        run.stop()


@pytest.fixture(scope="session")
def tiny_run(tiny_run_started) -> Path:
    """The one complete tiny run that the pipeline and Slurm tests all read."""
    return tiny_run_started.finished()


# Marker values for the secrets a run may hold: tests set them and find them in no file a run writes.
SECRETS = {"HF_TOKEN": "hf_MARKERtoken0123456789", "WANDB_API_KEY": "MARKERwandb0123456789abcdef"}


def files_holding_secrets(*roots: Path) -> list[str]:
    """Every file under `roots` that holds one of the SECRETS' values."""
    found = []
    for root in roots:
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.is_file():
                content = path.read_bytes()
                found += [f"{path}: {name}" for name, value in SECRETS.items() if value.encode() in content]
    return found


def write_config(workdir: Path, name: str, overlay: dict) -> str:
    path = workdir / "config" / name
    path.write_text(yaml.safe_dump(overlay))
    return str(path)
