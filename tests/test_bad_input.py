"""Bad input is refused by the real entry points: a non-zero exit and a message naming the file or key
and the fix, never a Python traceback, and nothing written over earlier artifacts."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT
from prism.core.config import load_config
from prism.core.manifest import write_manifest
from prism.data.__main__ import main as make_data


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, env=env)


def assert_refused(result: subprocess.CompletedProcess, *fragments: str) -> str:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    for fragment in fragments:
        assert fragment in output, output
    return output


# ---------------------------------------------------------------------------------------------- configs


def preflight(tmp_path: Path, overlay=None, text: str | None = None, directory: Path = ROOT):
    path = tmp_path / "overlay.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(overlay))
    return run("-m", "prism.cli", "preflight", "--directory", str(directory), "--configfile", str(path))


@pytest.mark.parametrize(
    ("overlay", "expected"),
    [
        ({"trainer": {"steps": 3}}, ["trainer: unknown key", "allowed here: mode, paths, cluster"]),
        ({"cluster": {"partiton": "gpu"}}, ["cluster.partiton: unknown key", "partition, account"]),
        ({"rl": {"steps": "many"}}, ["rl.steps", "valid integer", "'many'"]),
        ({"policies": {"name": "tiny"}}, ["policies", "valid list"]),
        ({"align": {"engine": "deepspeed"}}, ["align.engine", "'verl' or 'cpu'", "'deepspeed'"]),
        ({"models": {"qwen3-vl-2b": {"source": "s3"}}}, ["models.qwen3-vl-2b.source", "'hf' or 'tiny'"]),
        ({"models": {"extra": {"source": "hf"}}}, ["models.extra", "'hf' block is missing"]),
        ({"sft": {"lr": -1.0}}, ["sft.lr", "greater than 0"]),
        ({"align": {"alpha": "half"}}, ["align.alpha", "valid number"]),
        (
            {"rl": {"resources": {"gpus": 16, "nodes": 1}}},
            ["rl.resources.gpus", "do not fit on 1 node", "gpus_per_node=8"],
        ),
        ({"align": {"resources": {"gpus": 9, "nodes": 2}}}, ["align.resources.gpus", "split evenly over 2"]),
        (
            {"discriminator": {"warmup": {"resources": {"nodes": 2, "gpus": 16}}}},
            ["discriminator.warmup", "one node: set resources.nodes to 1"],
        ),
        (
            {"data": {"rl": {"source": "synthetic"}}, "eval": {"engine": "cpu", "synthetic": None}},
            ["data.rl", "'synthetic' block is missing", "eval", "add eval.synthetic"],
        ),
    ],
    ids=[
        "unknown-top-level-key",
        "misspelt-key",
        "string-for-int",
        "mapping-for-list",
        "unknown-engine",
        "unknown-source",
        "source-without-block",
        "negative-lr",
        "string-for-float",
        "gpus-over-node",
        "gpus-split-unevenly",
        "multi-node-accelerate",
        "every-problem-at-once",
    ],
)
def test_bad_config_is_refused_naming_each_key(tmp_path, overlay, expected):
    assert_refused(preflight(tmp_path, overlay), "problem(s) to fix", *expected)


def test_malformed_yaml_names_file_and_line(tmp_path):
    assert_refused(preflight(tmp_path, text="rl:\n  steps: [1,\n"), "overlay.yaml", "not valid YAML at line")


def test_a_config_that_is_not_a_mapping_is_refused(tmp_path):
    assert_refused(preflight(tmp_path, text="- rl\n- sft\n"), "overlay.yaml", "must be a mapping")


def test_a_missing_required_key_is_named(tmp_path):
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    del config["tables"], config["rl"]["lr"]
    (tmp_path / "config").mkdir()
    (tmp_path / "config/config.yaml").write_text(yaml.safe_dump(config))
    output = assert_refused(preflight(tmp_path, {}, directory=tmp_path), "tables: required key is missing")
    assert "rl.lr: required key is missing" in output


def test_snakemake_refuses_unevenly_split_gpus_before_submitting(workflow_copy):
    from conftest import snakemake, write_config

    overlay = write_config(workflow_copy, "bad.yaml", {"rl": {"resources": {"gpus": 9, "nodes": 2}}})
    result = snakemake(workflow_copy, "-n", "--configfile", overlay)
    assert_refused(result, "rl.resources.gpus: 9 GPUs do not split evenly over 2 nodes")


@pytest.mark.parametrize(
    ("overlay", "expected"),
    [
        ({"align": {"source": "released"}}, "align.released: no released checkpoint for ['qwen3-vl-8b']"),
        ({"eval": {"benchmarks": []}}, "eval.benchmarks: List should have at least 1 item"),
    ],
)
def test_snakemake_refuses_what_used_to_end_in_a_traceback(workflow_copy, overlay, expected):
    from conftest import snakemake, write_config

    result = snakemake(workflow_copy, "-n", "--configfile", write_config(workflow_copy, "bad.yaml", overlay))
    assert_refused(result, expected)


def test_snakemake_warns_of_a_multi_node_job_on_part_of_each_node(workflow_copy):
    from conftest import snakemake, write_config

    overlay = write_config(workflow_copy, "split.yaml", {"align": {"resources": {"gpus": 8, "nodes": 2}}})
    result = snakemake(workflow_copy, "-n", "--configfile", overlay)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warning: align.resources: 2 nodes x 4 GPUs of 8-GPU nodes" in result.stderr


# ------------------------------------------------------------------------------------ data and models


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """One small valid data set per stage."""
    root = tmp_path_factory.mktemp("good")
    for name in ("sft", "warmup", "align", "rl"):
        spec = {"source": "synthetic", "synthetic": {"examples": 4, "seed": 0}}
        make_data(["dataset", "--name", name, "--config", json.dumps(spec), "--out", str(root / name)])
    return root


@pytest.fixture
def stage(tiny_config, tmp_path):
    """Run a stage the way its rule does; check it wrote nothing over an earlier artifact or state."""
    cfg = load_config(tiny_config)
    configs = {
        "prism.sft": cfg.sft.stage_slice(),
        "prism.rl": cfg.rl.job_slice("grpo"),
        "prism.align": cfg.align.stage_slice(),
        "prism.discriminator": {
            "architecture": "moe",
            "sees_images": True,
            "value_head_dropout": 0.1,
            "warmup": cfg.discriminator.warmup.model_dump(exclude={"resources"}),
        },
    }
    out, work = tmp_path / "out", tmp_path / "work"
    for directory in (out, work):
        directory.mkdir()
        (directory / "earlier.bin").write_bytes(b"an earlier artifact")

    def run_stage(module: str, *inputs: str, config: str | None = None) -> str:
        command = ["-m", *module.split(), "--config", config or json.dumps(configs[module.split()[0]])]
        result = run(*command, *inputs, "--out", str(out), "--work", str(work))
        for directory in (out, work):
            assert (directory / "earlier.bin").read_bytes() == b"an earlier artifact"
        assert not (out / "manifest.json").exists()
        return result

    return run_stage


def broken_copy(source: Path, tmp_path: Path) -> Path:
    return shutil.copytree(source, tmp_path / source.name)


@pytest.fixture
def disc(disc_dir, tmp_path):
    """The session's warmed discriminator as a finished artifact (with its manifest)."""
    path = shutil.copytree(disc_dir, tmp_path / "disc")
    write_manifest(path / "manifest.json", "warmup_discriminator", [], {})
    return path


def test_a_stage_config_that_is_not_json_is_refused(stage, tiny_dir, good):
    result = stage("prism.sft", "--model", str(tiny_dir), "--data", str(good / "sft"), config="{engine: cpu")
    assert_refused(result, "--config is not valid JSON")


def test_an_interrupted_download_is_not_taken_as_a_model(stage, tiny_dir, good, tmp_path):
    partial = broken_copy(tiny_dir, tmp_path)
    (partial / "manifest.json").unlink()  # the download stopped before its manifest
    result = stage("prism.sft", "--model", str(partial), "--data", str(good / "sft"))
    assert_refused(
        result, f"--model {partial} has no manifest.json", "interrupted download", "Rerun the rule"
    )


def test_a_missing_data_directory_is_named(stage, tiny_dir, tmp_path):
    result = stage("prism.rl", "--model", str(tiny_dir), "--data", str(tmp_path / "nowhere"))
    assert_refused(result, f"--data {tmp_path / 'nowhere'} has no manifest.json")


def test_a_data_directory_given_as_the_model_is_refused(stage, good):
    result = stage("prism.sft", "--model", str(good / "rl"), "--data", str(good / "sft"))
    assert_refused(result, f"{good / 'rl'}: no config.json", "not a Hugging Face model directory")


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda d: (d / "dataset_info.json").unlink(), ["dataset_info.json: cannot read the data file"]),
        (lambda d: (d / "sft.json").write_text('[{"messages": '), ["sft.json: not valid JSON"]),
        (lambda d: (d / "images/000001.png").unlink(), ["sft.json example 1: cannot read image"]),
        (
            lambda d: (d / "images/000002.png").write_bytes(b"not a png"),
            ["example 2: image", "unreadable image"],
        ),
        (
            lambda d: (d / "sft.json").write_text(json.dumps([{"messages": [], "images": ["x.png"]}])),
            ["sft.json: example 0 needs one image, a user turn and an assistant reply"],
        ),
    ],
    ids=["no-dataset-info", "truncated-json", "missing-image", "corrupt-image", "no-reply"],
)
def test_broken_sft_data_is_refused(stage, tiny_dir, good, tmp_path, damage, expected):
    data = broken_copy(good / "sft", tmp_path)
    damage(data)
    result = stage("prism.sft", "--model", str(tiny_dir), "--data", str(data))
    assert_refused(result, *expected, "fix or rebuild that input")


def rewrite_parquet(path: Path, change) -> None:
    frame = pd.read_parquet(path)
    change(frame)
    frame.to_parquet(path)


def test_rl_parquet_with_wrong_columns_is_refused(stage, tiny_dir, good, tmp_path):
    data = broken_copy(good / "rl", tmp_path)
    rewrite_parquet(data / "train.parquet", lambda f: f.pop("reward_model"))
    result = stage("prism.rl", "--model", str(tiny_dir), "--data", str(data))
    assert_refused(result, "train.parquet: missing columns ['reward_model']")


def test_rl_parquet_with_an_unreadable_image_is_refused(stage, tiny_dir, good, tmp_path):
    data = broken_copy(good / "rl", tmp_path)
    rewrite_parquet(
        data / "train.parquet", lambda f: f.__setitem__("images", [[{"bytes": b"junk"}]] * len(f))
    )
    result = stage("prism.rl", "--model", str(tiny_dir), "--data", str(data))
    assert_refused(result, "train.parquet row 0: unreadable image")


def test_align_data_that_is_not_parquet_is_refused(stage, tiny_dir, disc, good, tmp_path):
    data = broken_copy(good / "align", tmp_path)
    (data / "train.parquet").write_bytes(b"PAR1 cut short")
    result = stage("prism.align", "--model", str(tiny_dir), "--disc", str(disc), "--data", str(data))
    assert_refused(result, "train.parquet: cannot read parquet")


def test_align_refuses_a_plain_model_as_discriminator(stage, tiny_dir, good, tmp_path):
    plain = broken_copy(tiny_dir, tmp_path)
    result = stage(
        "prism.align", "--model", str(tiny_dir), "--disc", str(plain), "--data", str(good / "align")
    )
    assert_refused(result, "not a discriminator checkpoint", "Point discriminator.released at a warmed")


def test_align_refuses_a_discriminator_head_of_another_model(stage, tiny_dir, disc, good):
    from safetensors.torch import save_file
    from torch import zeros

    save_file({"v_head.1.weight": zeros(1, 32)}, disc / "value_head.safetensors")
    result = stage(
        "prism.align", "--model", str(tiny_dir), "--disc", str(disc), "--data", str(good / "align")
    )
    assert_refused(
        result, "value head v_head.1.weight has shape (1, 32)", "the head belongs to another model"
    )


def test_warmup_refuses_a_dense_model_where_the_moe_is_expected(stage, tiny_dir, good):
    result = stage("prism.discriminator warmup", "--model", str(tiny_dir), "--data", str(good / "warmup"))
    assert_refused(result, f"{tiny_dir}: a dense model", "point --model at the upcycle stage's output")


@pytest.fixture
def moe(tiny_dir, tmp_path):
    """A model directory that declares experts: enough to get past the architecture check."""
    path = broken_copy(tiny_dir, tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["text_config"]["num_experts"] = 4
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda f: f.write_text('{"prompt": "x"\n'), ["warmup_pairwise.jsonl:1: not valid JSON"]),
        (
            lambda f: f.write_text(json.dumps({"prompt": "x", "image": "images/000000.png"}) + "\n"),
            ["warmup_pairwise.jsonl:1: empty or missing fields ['teacher_caption'"],
        ),
    ],
    ids=["bad-json-line", "missing-fields"],
)
def test_broken_warmup_pairs_are_refused(stage, moe, good, tmp_path, damage, expected):
    data = broken_copy(good / "warmup", tmp_path)
    damage(data / "warmup_pairwise.jsonl")
    result = stage("prism.discriminator warmup", "--model", str(moe), "--data", str(data))
    assert_refused(result, *expected)


def test_data_builder_refuses_an_unknown_dataset_and_a_bad_spec(tmp_path):
    spec = '{"source": "synthetic", "synthetic": {"examples": 4}}'
    unknown = run(
        "-m", "prism.data", "dataset", "--name", "dpo", "--config", spec, "--out", str(tmp_path / "a")
    )
    assert_refused(unknown, "unknown dataset 'dpo'", "sft, warmup, align, rl")
    spec = '{"source": "synthetic", "synthetic": {"examples": -4}}'
    bad = run("-m", "prism.data", "dataset", "--name", "rl", "--config", spec, "--out", str(tmp_path / "b"))
    assert_refused(bad, "invalid --config", "synthetic.examples", "greater than 0")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_download_that_cannot_finish_keeps_its_files_and_writes_no_manifest(tmp_path):
    import os

    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text("{}")  # what an interrupted earlier attempt fetched
    spec = json.dumps({"source": "hf", "hf": {"repo": "Qwen/Qwen3-VL-2B-Instruct"}})
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    result = run("-m", "prism.data", "model", "--name", "q", "--config", spec, "--out", str(out), env=env)
    assert_refused(result, "download of Qwen/Qwen3-VL-2B-Instruct", "No manifest was written", "rerun")
    assert (out / "config.json").read_text() == "{}" and not (out / "manifest.json").exists()
