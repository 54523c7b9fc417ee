"""Shared fixtures: configs as Snakemake would merge them, and throw-away copies of the workflow."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW_FILES = ("Snakefile", "rules", "config", "profiles", "envs", "prism", "report")


def load_yaml(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / name).read_text())


@pytest.fixture
def paper_config() -> dict:
    return load_yaml("config.yaml")


@pytest.fixture
def tiny_config() -> dict:
    merged = copy.deepcopy(load_yaml("config.yaml"))
    update_config(merged, load_yaml("tiny.yaml"))
    return merged


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


def snakemake(
    workdir: Path, *args: str, timeout: int = 900, env: dict | None = None
) -> subprocess.CompletedProcess:
    # jobs run `python -m prism...`: the interpreter running the tests, and the workflow copy's package
    env = dict(os.environ, **(env or {}), PYTHONPATH=str(workdir))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    command = [str(Path(sys.executable).with_name("snakemake")), *args]
    return subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env)


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
