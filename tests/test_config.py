"""One validated config: the paper and tiny setups load; bad ones are refused naming key and choices."""

import copy

import pytest
from snakemake.utils import update_config

from conftest import snakemake, write_config
from prism.core.config import ConfigError, load_config


def test_paper_config_matches_the_published_setup(paper_config):
    cfg = load_config(paper_config)
    assert [p.model for p in cfg.policies] == ["qwen3-vl-4b", "qwen3-vl-8b"]
    assert cfg.models["qwen3-vl-2b"].hf.repo == "Qwen/Qwen3-VL-2B-Instruct"
    assert (cfg.discriminator.upcycle.num_experts, cfg.discriminator.upcycle.top_k) == (4, 2)
    assert cfg.rl.algorithms == ["grpo", "dapo", "gspo"]
    assert len(cfg.eval.variants) == 9 and len(cfg.eval.benchmarks) == 7
    assert (cfg.align.alpha, cfg.align.format_penalty, cfg.align.rollouts_per_prompt) == (0.5, 1.5, 16)
    assert (cfg.rl.accuracy_weight, cfg.rl.format_weight) == (0.8, 0.2)
    dapo = cfg.rl.algorithm["dapo"]
    assert (dapo.clip_ratio_low, dapo.clip_ratio_high, dapo.clip_ratio_c) == (0.2, 0.28, 10.0)
    assert dapo.dynamic_sampling.enable and dapo.overlong_buffer.length == 4096
    gspo = cfg.rl.algorithm["gspo"]
    assert (gspo.loss_mode, gspo.loss_agg_mode) == ("gspo", "seq-mean-token-mean")
    assert (cfg.sft.lr, cfg.sft.warmup_ratio, cfg.sft.max_length) == (1e-5, 0.1, 8192)


def test_tiny_overlay_replaces_lists_and_keeps_paper_hyperparameters(tiny_config):
    cfg = load_config(tiny_config)
    assert [p.name for p in cfg.policies] == ["tiny"]
    assert cfg.rl.algorithm["dapo"].clip_ratio_high == 0.28  # inherited from the paper config
    assert {cfg.sft.engine, cfg.align.engine, cfg.rl.engine, cfg.eval.engine} == {"cpu"}


def bad(config: dict, path: str, value) -> dict:
    config = copy.deepcopy(config)
    *parents, leaf = path.split(".")
    node = config
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[leaf] = value
    return config


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("rl.algorithms", ["grpo", "ppo"], ["rl.algorithms.1", "'grpo', 'dapo' or 'gspo'", "'ppo'"]),
        ("eval.benchmarks", ["mmbench"], ["eval.benchmarks.0", "'mathvista'", "'mmbench'"]),
        ("sft.lrr", 1e-5, ["sft.lrr", "unknown key", "allowed here: lr, scheduler,", "engine"]),
        ("rl.lr", "fast", ["rl.lr", "valid number"]),
        ("align.alpha", 1.5, ["align.alpha", "less than or equal to 1"]),
        ("sft.engine", "deepspeed", ["sft.engine", "'llamafactory' or 'cpu'"]),
        ("eval.variants", ["sft-ppo"], ["eval.variants.0", "'sft-ppo'", "prism-grpo"]),
        ("policies.0.model", "qwen9", ["policies.0.model", "'qwen9' is not in models"]),
        ("sft.resources.gpus", 16, ["sft.resources.gpus", "do not fit on 1 node"]),
        ("discriminator.upcycle.top_k", 5, ["top_k (5) must not exceed num_experts (4)"]),
        ("rl.algorithm.dapo.overlong_buffer.length", 9000, ["overlong_buffer.length of ['dapo']"]),
        ("rl.algorithms", ["grpo", "dapo", "gspo"], None),
    ],
)
def test_bad_config_is_refused_naming_the_key(paper_config, path, value, expected):
    config = bad(paper_config, path, value)
    if expected is None:
        load_config(config)
        return
    with pytest.raises(ConfigError) as err:
        load_config(config)
    for fragment in expected:
        assert fragment in str(err.value)


def test_the_sft_subset_ablation_trains_on_some_of_the_sft_sets_repos(paper_config):
    config = bad(paper_config, "ablations.settings", ["sft_subset"])
    assert load_config(config).data.sft.parts() == ["gemini_distill", "gemini_public_mmr1"]
    for subset in ([], ["gemini_distill", "gemini_public_mmr1"], ["gemini_distill", "mmr1"]):
        with pytest.raises(ConfigError, match="must name some, not all, of the SFT set's parts"):
            load_config(bad(config, "ablations.sft_subset", subset))
    one_repo = bad(config, "data.sft.hf", {"repo": "prism-vlm/gemini_distill"})
    with pytest.raises(ConfigError, match=r"parts \[\]"):
        load_config(one_repo)


TWO_POLICIES_ONE_NAME = [
    {"name": "qwen3-vl-4b", "model": "qwen3-vl-4b"},
    {"name": "qwen3-vl-4b", "model": "qwen3-vl-8b"},
]


@pytest.mark.parametrize(
    ("overlay", "expected"),
    [
        ({"align": {"source": "released"}}, ["align.released: no released checkpoint for ['qwen3-vl-8b']"]),
        (
            {"sft": {"source": "released", "released": {"qwen3-vl-8b": ""}}},
            ["sft.released: no released checkpoint for ['qwen3-vl-8b']", "sft.source: build"],
        ),
        ({"eval": {"benchmarks": []}}, ["eval.benchmarks: List should have at least 1 item"]),
        ({"policies": TWO_POLICIES_ONE_NAME}, ["policies: the name 'qwen3-vl-4b' is given to 2 policies"]),
        (
            {"cluster": {"gpu_model": ""}, "align": {"resources": {"gpus": 16, "nodes": 2}}},
            ["cluster.gpu_model: empty, but align runs on 2 nodes", "--gres=gpu:MODEL:N"],
        ),
        ({"rl": {"resources": {"gpus": 0}}}, ["rl.resources.gpus: 0, but engine 'verl' runs on GPUs"]),
        (
            {"rl": {"source": "released"}},
            [
                "rl.released: no released checkpoint for the runs",
                "'qwen3-vl-4b/sft-grpo'",
                "'qwen3-vl-8b/prism-gspo'",
            ],
        ),
    ],
)
def test_a_config_that_would_fail_later_is_refused_on_load(paper_config, overlay, expected):
    config = copy.deepcopy(paper_config)
    update_config(config, overlay)
    with pytest.raises(ConfigError) as err:
        load_config(config)
    for fragment in expected:
        assert fragment in str(err.value)


def test_an_unused_ablations_block_is_not_validated(paper_config):
    config = copy.deepcopy(paper_config)
    update_config(config, {"ablations": {"settings": [], "policy": "qwen3-vl-2b"}})
    assert load_config(config).ablations.settings == []
    update_config(config, {"ablations": {"settings": ["no_sft"]}})
    with pytest.raises(ConfigError, match="ablations.policy: 'qwen3-vl-2b' is not one of the policies"):
        load_config(config)


def test_a_multi_node_job_on_part_of_each_node_is_warned_about(paper_config):
    assert load_config(paper_config).warnings() == []
    config = copy.deepcopy(paper_config)
    update_config(config, {"align": {"resources": {"gpus": 8, "nodes": 2}}})
    (warning,) = load_config(config).warnings()
    assert warning.startswith("align.resources: 2 nodes x 4 GPUs of 8-GPU nodes")


def test_snakemake_refuses_a_bad_config_without_a_traceback(workflow_copy):
    overlay = write_config(workflow_copy, "bad.yaml", {"rl": {"algorithms": ["grpo", "ppo"], "lrr": 1}})
    result = snakemake(workflow_copy, "-n", "--configfile", overlay)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "rl.algorithms.1" in output and "'ppo'" in output and "rl.lrr: unknown key" in output
    assert "Traceback" not in output and 'File "' not in output


def field_names(model) -> set[str]:
    """Every key name the config models accept, at any depth."""
    from typing import get_args

    from pydantic import BaseModel

    names = set()
    for name, field in model.model_fields.items():
        names.add(name)
        for candidate in (field.annotation, *get_args(field.annotation)):
            for inner in (candidate, *get_args(candidate)):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    names |= field_names(inner)
    return names


def test_config_readme_documents_every_key():
    from conftest import ROOT
    from prism.core.config import Config

    readme = (ROOT / "config" / "README.md").read_text()
    undocumented = sorted(n for n in field_names(Config) if f"`{n}" not in readme and f".{n}" not in readme)
    assert not undocumented, f"config/README.md does not mention {undocumented}"
