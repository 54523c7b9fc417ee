"""Hugging Face downloads, against a fake Hub on localhost: `python -m prism.data model|dataset` with an `hf`
source fetches each repo at its resolved commit into its own folder and lists every file with its size in
manifest.json, written last. The token comes from HF_TOKEN alone and shows up in no output and no file; a
gated repo or a broken download stops with what to do and writes no manifest, and a rerun resumes."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from fake_hub import FakeHub, commit_of, running_hub

SHARDS = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
MODEL = {  # what a policy checkpoint must hold; the weights are opaque bytes to the download
    "config.json": b'{"model_type": "qwen3_vl"}\n',
    "tokenizer_config.json": b"{}\n",
    "preprocessor_config.json": b"{}\n",
    "model.safetensors.index.json": json.dumps({"weight_map": {"a": SHARDS[0], "b": SHARDS[1]}}).encode(),
    SHARDS[0]: bytes(range(256)) * 8,
    SHARDS[1]: b"\0" * 100,
}
DATASET = {"README.md": b"# tiny\n", "data/train.jsonl": b'{"q": "1+1", "a": "2"}\n' * 20}


@pytest.fixture
def hub():
    with running_hub() as server:
        yield server


def fetch(hub: FakeHub, tmp_path: Path, kind: str, name: str, hf: dict, out: Path):
    """Run the real entry point as Snakemake would; the token only in the environment."""
    marker = f"hf_marker_{uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and "proxy" not in k.lower()}
    env.update(
        HF_TOKEN=marker,
        HF_ENDPOINT=f"http://127.0.0.1:{hub.server_port}",
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        NO_PROXY="127.0.0.1,localhost",
    )
    config = json.dumps({"source": "hf", "hf": {"revision": "main", "files": [], "extra_repos": [], **hf}})
    command = [sys.executable, "-m", "prism.data", kind, "--name", name, "--config", config]
    command += ["--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert marker not in " ".join(command) + result.stdout + result.stderr
    return result, marker


def files_holding(root: Path, marker: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and marker.encode() in p.read_bytes()]


def assert_stopped(result: subprocess.CompletedProcess, out: Path, *fragments: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    assert all(fragment in output for fragment in fragments), output
    assert not (out / "manifest.json").exists()


def test_model_download_records_commit_and_files_and_keeps_the_token_secret(hub, tmp_path):
    hub.repos["models", "org/tiny-model"] = MODEL
    out = tmp_path / "model"
    result, marker = fetch(hub, tmp_path, "model", "policy", {"repo": "org/tiny-model"}, out)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "manifest.json").read_text())["metrics"]
    assert metrics["repos"] == ["org/tiny-model"]
    assert metrics["commits"] == {"org/tiny-model": commit_of("org/tiny-model")}
    assert metrics["files"] == {"org/tiny-model": {name: len(content) for name, content in MODEL.items()}}
    assert all((out / name).read_bytes() == content for name, content in MODEL.items())
    assert hub.authorizations("org/tiny-model") == {f"Bearer {marker}"}
    assert any(".cache" in p.parts for p in out.rglob("*"))  # the hidden download metadata is scanned too
    assert files_holding(out, marker) == []
    assert files_holding(tmp_path / "hf_home", marker) == []


def test_gated_repo_stops_with_what_to_do(hub, tmp_path):
    hub.repos["models", "org/gated-model"] = MODEL
    hub.gated.add("org/gated-model")
    out = tmp_path / "model"
    result, marker = fetch(hub, tmp_path, "model", "policy", {"repo": "org/gated-model"}, out)
    assert_stopped(result, out, "gated", "HF_TOKEN")
    assert hub.authorizations("org/gated-model") == {f"Bearer {marker}"}
    assert files_holding(out, marker) == []


@pytest.mark.parametrize("failure", ["500", "drop"])
def test_failed_download_writes_no_manifest_and_the_rerun_resumes(hub, tmp_path, failure):
    hub.repos["datasets", "org/tiny-data"] = DATASET
    hub.broken["data/train.jsonl"] = failure
    out = tmp_path / "sft"
    result, first_marker = fetch(hub, tmp_path, "dataset", "sft", {"repo": "org/tiny-data"}, out)
    assert_stopped(result, out, "No manifest was written", "rerun")
    assert not (out / "data" / "train.jsonl").exists()
    assert (out / "README.md").read_bytes() == DATASET["README.md"]
    assert hub.gets("/README.md") == 1
    tries = hub.gets("/data/train.jsonl")

    hub.broken.clear()
    result, marker = fetch(hub, tmp_path, "dataset", "sft", {"repo": "org/tiny-data"}, out)
    assert result.returncode == 0, result.stderr
    assert hub.gets("/README.md") == 1  # fetched once: the rerun reused it
    assert hub.gets("/data/train.jsonl") == tries + 1
    metrics = json.loads((out / "manifest.json").read_text())["metrics"]
    assert metrics["files"] == {"org/tiny-data": {name: len(content) for name, content in DATASET.items()}}
    assert (out / "data" / "train.jsonl").read_bytes() == DATASET["data/train.jsonl"]
    assert files_holding(out, first_marker) == files_holding(out, marker) == []


def test_dataset_with_extra_repos_lands_each_in_its_own_folder(hub, tmp_path):
    hub.repos["datasets", "org/part-a"] = DATASET
    hub.repos["datasets", "other/part-b"] = {"images/0.txt": b"zero"}
    out = tmp_path / "rl"
    hf = {"repo": "org/part-a", "extra_repos": ["other/part-b"]}
    result, marker = fetch(hub, tmp_path, "dataset", "rl", hf, out)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "manifest.json").read_text())["metrics"]
    assert metrics["repos"] == ["org/part-a", "other/part-b"]
    assert metrics["commits"] == {repo: commit_of(repo) for repo in metrics["repos"]}
    assert metrics["files"] == {
        "org/part-a": {f"part-a/{name}": len(content) for name, content in DATASET.items()},
        "other/part-b": {"part-b/images/0.txt": 4},
    }
    assert (out / "part-b" / "images" / "0.txt").read_bytes() == b"zero"
    assert (out / "part-a" / "data" / "train.jsonl").read_bytes() == DATASET["data/train.jsonl"]
    assert files_holding(out, marker) == []


@pytest.mark.parametrize(
    ("missing", "expected"),
    [
        ("tokenizer_config.json", "not a complete checkpoint, missing ['tokenizer_config.json']"),
        (SHARDS[1], "rerun"),
    ],
)
def test_a_released_checkpoint_missing_a_file_is_refused(hub, tmp_path, missing, expected):
    hub.repos["models", "org/sft"] = {name: data for name, data in MODEL.items() if name != missing}
    out = tmp_path / "sft"
    result, _ = fetch(hub, tmp_path, "model", "sft", {"repo": "org/sft"}, out)
    assert_stopped(result, out, expected)
