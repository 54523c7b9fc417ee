"""Fault injection: a training job killed mid-run resumes from its saved step when rerun, and finishes with
a valid artifact and one unbroken metrics curve. No secret from the environment reaches any file."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import pytest
from snakemake.utils import update_config

from conftest import SECRETS, files_holding_secrets, load_yaml
from prism.core.config import load_config
from prism.core.manifest import write_manifest
from prism.data.__main__ import main as make_data


@pytest.fixture(scope="module")
def cfg():
    """The tiny config, whose stage slices the runs below shrink."""
    merged = load_yaml("config.yaml")
    update_config(merged, load_yaml("tiny.yaml"))
    return load_config(merged)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for name, examples in (("sft", 64), ("warmup", 48), ("align", 16), ("rl", 16)):
        spec = {"source": "synthetic", "synthetic": {"examples": examples, "seed": 0}}
        make_data(["dataset", "--name", name, "--config", json.dumps(spec), "--out", str(root / name)])
    return root


def stage_command(module: list[str], config: dict, inputs: dict, out: Path, work: Path) -> list[str]:
    command = [sys.executable, "-m", *module, "--config", json.dumps(config)]
    for name, path in inputs.items():
        command += [f"--{name}", str(path)]
    return [*command, "--out", str(out), "--work", str(work)]


def metric_rows(work: Path) -> list[dict]:
    found = list(work.glob("*/metrics.csv"))
    if not found:
        return []
    with found[0].open() as handle:
        return list(csv.DictReader(handle))


def saved_step(work: Path) -> int:
    """The step of the training state left in the work directory (plain torch or Accelerate)."""
    import torch

    for state in work.glob("*/state.pt"):
        return torch.load(state, weights_only=False)["step"]
    steps = [json.loads(p.read_text())["step"] for p in work.glob("*/accelerate_state*/step.json")]
    return max(steps, default=0)


def run_logged(command: list[str], log: Path, **popen) -> subprocess.Popen:
    env = dict(os.environ, **SECRETS, PYTHONUNBUFFERED="1")
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, **popen)


def kill_and_resume(tmp_path: Path, command: list[str], kill_after: int, sig: signal.Signals) -> dict:
    """Run, kill with `sig` once `kill_after` steps are logged, rerun to the end; what each run left."""
    out, work = Path(command[command.index("--out") + 1]), Path(command[command.index("--work") + 1])
    process = run_logged(command, tmp_path / "killed.log")
    deadline = time.time() + 300
    while len(metric_rows(work)) < kill_after:
        assert process.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.time() < deadline, "the stage logged too few steps in time"
        time.sleep(0.02)
    process.send_signal(sig)
    process.wait(timeout=60)
    killed_at = len(metric_rows(work))
    assert not (out / "manifest.json").exists(), "a killed job must not leave a manifest"
    saved = saved_step(work)
    rerun = run_logged(command, tmp_path / "rerun.log")
    assert rerun.wait(timeout=600) == 0, (tmp_path / "rerun.log").read_text()[-3000:]
    print(f"killed after {killed_at} logged steps, resumed from step {saved}")
    return {"killed_at": killed_at, "saved": saved, "log": (tmp_path / "rerun.log").read_text()}


def assert_resumed_and_complete(result: dict, out: Path, stage: str, total: int, every: int) -> None:
    assert 0 < result["saved"] < total and result["saved"] % every == 0
    assert result["saved"] > result["killed_at"] - every - 1  # only the steps since the last save are lost
    assert f"resumed from step {result['saved']} (" in result["log"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == stage and manifest["metrics"]["steps"] == total
    assert all(Path(p).exists() for p in manifest["inputs"])
    with (out / "metrics.csv").open() as handle:
        assert [int(r["step"]) for r in csv.DictReader(handle)] == list(range(1, total + 1))


def test_sft_killed_mid_run_resumes_from_its_saved_step(tiny_dir, data, cfg, tmp_path):
    config = {**cfg.sft.model_dump(exclude={"resources", "source", "released"}), "epochs": 2, "batch_size": 8}
    out, work = tmp_path / "sft", tmp_path / "work"
    command = stage_command(["prism.sft"], config, {"model": tiny_dir, "data": data / "sft"}, out, work)
    result = kill_and_resume(tmp_path, command, kill_after=5, sig=signal.SIGKILL)
    assert_resumed_and_complete(result, out, "sft", total=16, every=4)
    assert (out / "model.safetensors").exists()
    assert files_holding_secrets(tmp_path) == []


@pytest.fixture(scope="module")
def moe_dir(tiny_dir, cfg, tmp_path_factory):
    """The upcycled MoE as the upcycle stage writes it."""
    from prism.discriminator.stages import upcycle_stage

    out = tmp_path_factory.mktemp("moe")
    spec = cfg.discriminator.upcycle.model_dump(exclude={"resources"})
    upcycle_stage(Namespace(config={"upcycle": spec}, model=tiny_dir, out=out, threads=1))
    return out


def test_warmup_preempted_mid_run_resumes_from_its_accelerate_state(moe_dir, data, cfg, tmp_path):
    warmup = {
        **cfg.discriminator.warmup.model_dump(exclude={"resources"}),
        "batch_size": 8,  # 40 training lines = 80 pairs: 10 steps
        "heldout_pairs": 8,
    }
    config = {
        "architecture": "moe",
        "sees_images": True,
        "value_head_dropout": cfg.discriminator.value_head_dropout,
        "warmup": warmup,
    }
    out, work = tmp_path / "warm", tmp_path / "work"
    inputs = {"model": moe_dir, "data": data / "warmup"}
    command = stage_command(["prism.discriminator", "warmup"], config, inputs, out, work)
    result = kill_and_resume(tmp_path, command, kill_after=3, sig=signal.SIGTERM)  # Slurm's preemption signal
    assert_resumed_and_complete(result, out, "warmup_discriminator", total=10, every=2)
    assert (out / "value_head.safetensors").exists()
    assert files_holding_secrets(tmp_path) == []


def test_alignment_killed_mid_run_resumes_from_its_saved_step(tiny_dir, disc_dir, data, cfg, tmp_path):
    disc = shutil.copytree(disc_dir, tmp_path / "disc")
    write_manifest(disc / "manifest.json", "warmup_discriminator", [], {})
    small = {"steps": 8, "prompts_per_step": 2, "rollouts_per_prompt": 2, "max_response_length": 16}
    config = {**cfg.align.stage_slice(), **small}
    out, work = tmp_path / "prism", tmp_path / "work"
    inputs = {"model": tiny_dir, "disc": disc, "data": data / "align"}
    command = stage_command(["prism.align"], config, inputs, out, work)
    result = kill_and_resume(tmp_path, command, kill_after=3, sig=signal.SIGKILL)
    assert_resumed_and_complete(result, out, "align", total=8, every=2)
    assert files_holding_secrets(tmp_path) == []


def test_dapo_killed_mid_run_resumes_from_its_saved_step(tiny_dir, data, cfg, tmp_path):
    small = {"steps": 8, "prompts_per_step": 2, "rollouts_per_prompt": 2, "max_response_length": 16}
    config = cfg.rl.job_slice("dapo")
    config = {
        **config,
        **small,
        "algorithm": {
            **config["algorithm"],
            "overlong_buffer": {**config["algorithm"]["overlong_buffer"], "length": 8},
        },
    }
    out, work = tmp_path / "rl", tmp_path / "work"
    command = stage_command(["prism.rl"], config, {"model": tiny_dir, "data": data / "rl"}, out, work)
    result = kill_and_resume(tmp_path, command, kill_after=3, sig=signal.SIGKILL)
    assert_resumed_and_complete(result, out, "rl", total=8, every=2)
    assert files_holding_secrets(tmp_path) == []


def test_a_state_save_cut_short_is_never_resumed(tmp_path, monkeypatch, capsys):
    import torch

    from prism.core.training import Checkpoint

    model = torch.nn.Linear(2, 1)
    Checkpoint(tmp_path, every=1).save(2, {"model": model})

    def disk_full(state, handle):
        handle.write(b"half a state")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError):
        Checkpoint(tmp_path, every=1).save(3, {"model": model})
    monkeypatch.undo()
    assert Checkpoint(tmp_path, every=1).load({"model": torch.nn.Linear(2, 1)}) == 2
    assert "resumed from step 2" in capsys.readouterr().out


class FakeAccelerator:
    """What AcceleratedCheckpoint asks of Accelerate, on one process; save_state can be made to crash."""

    is_main_process, crash = True, False

    def wait_for_everyone(self):
        pass

    def save_state(self, directory):
        Path(directory).mkdir()
        (Path(directory) / "model.safetensors").write_bytes(b"weights")
        if self.crash:
            raise KeyboardInterrupt  # killed mid-save

    def load_state(self, directory):
        self.loaded = directory


def test_an_accelerate_state_cut_short_is_never_resumed(tmp_path):
    from prism.discriminator.accelerated import AcceleratedCheckpoint

    accelerator = FakeAccelerator()
    AcceleratedCheckpoint(accelerator, tmp_path, every=2).save(2, {})
    AcceleratedCheckpoint(accelerator, tmp_path, every=2).save(4, {})
    accelerator.crash = True
    with pytest.raises(KeyboardInterrupt):
        AcceleratedCheckpoint(accelerator, tmp_path, every=2).save(6, {})
    assert AcceleratedCheckpoint(accelerator, tmp_path, every=2).load({}) == 4
    assert accelerator.loaded == str(tmp_path / "accelerate_state-00000004")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accelerate_state-00000004", "accelerate_state.tmp"]
    accelerator.crash = False
    AcceleratedCheckpoint(accelerator, tmp_path, every=2).save(6, {})  # the leftover is cleared first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accelerate_state-00000006"]
