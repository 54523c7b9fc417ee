"""The fidelity table (docs/fidelity.md) is generated from the code and true: each setting reaches its
library with the value the table shows, every difference from the paper or the scripts has its reason,
every test it names exists, and the reference's faults B8 (warmup truncation) and its unit list are
handled as it says."""

import ast
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from prism import fidelity
from prism.core import reward
from prism.core.segments import format_response

ROOT = Path(__file__).resolve().parent.parent

# Rows whose library value is computed from the config value, not copied: (config key, library key) ->
# what the library must read, given the config value and the whole config.
DERIVED = {
    ("eval.resources.gpus", "--model_args.data_parallel_size"): lambda gpus, cfg: str(
        gpus - 1
    ),  # the judge's GPU
    ("align.kl_coef", "actor_rollout_ref.actor.use_kl_loss"): lambda coef, cfg: coef > 0,
    ("rl.kl_coef", "actor_rollout_ref.actor.use_kl_loss"): lambda coef, cfg: coef > 0,
    (
        "rl.algorithm.dapo.dynamic_sampling.gen_prompts_per_step",
        "algorithm.filter_groups.max_inflight_gen_batches",
    ): (lambda prompts, cfg: math.ceil(prompts / cfg["rl"]["prompts_per_step"])),
}


@pytest.fixture(scope="module")
def rendered():
    return fidelity.renderings(fidelity.paper_config())


@pytest.fixture(scope="module")
def table(rendered):
    return fidelity.rows(fidelity.paper_config(), rendered)


def defined_tests() -> set[str]:
    names = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                names.add(f"tests/{path.name}::{node.name}")
    return names


def test_the_shipped_table_is_the_one_the_code_generates(table):
    shipped = fidelity.DOC.read_text()
    assert shipped == fidelity.markdown(fidelity.paper_config(), table), (
        "docs/fidelity.md is out of date: run `python -m prism.fidelity` and check the difference"
    )


def test_every_setting_reaches_its_library_as_the_table_says(table, rendered):
    raw = fidelity.paper_config()
    wrong = []
    for row in table:
        setting, ours = row["setting"], row["ours"]
        where = f"{setting.stage} / {setting.name}"
        if setting.key and setting.engine:
            derive = DERIVED.get((setting.key, setting.read_as))
            if setting.read_as == fidelity.WARMUP_STEPS:
                algo = fidelity.config_value(raw, setting.key.rsplit(".", 1)[0])
                expected = algo["lr_warmup_steps"] or int(algo["lr_warmup_steps_ratio"] * raw["rl"]["steps"])
            else:
                expected = derive(row["config"], raw) if derive else row["config"]
            if not fidelity.same(ours, expected):
                wrong.append(f"{where}: config {setting.key}={row['config']} but the library reads {ours}")
        if row["status"] != "same" and not setting.why:
            wrong.append(f"{where}: ours {ours} differs from the reference without a reason")
    assert not wrong, "\n".join(wrong)
    # The shared RL rows are read from GRPO's command: DAPO's and GSPO's render the same.
    shared = [row for row in table if row["setting"].stage == fidelity.RL_ALL]
    for row in shared:
        for algo in ("dapo", "gspo"):
            assert rendered[f"verl {algo}"][row["setting"].read_as][0] == row["ours"], (
                algo,
                row["setting"].name,
            )
    assert {"remove padding", "dynamic batch size"} <= {row["setting"].name for row in shared}


def test_every_named_test_exists():
    known = defined_tests()
    named = {t for s in fidelity.SETTINGS for t in s.tests} | {t for f in fidelity.FAULTS for t in f.tests}
    named |= {t for c in fidelity.CHOICES for t in c.tests}
    assert not sorted(named - known)
    assert all(s.tests for s in fidelity.SETTINGS)
    untested = [f.name for f in fidelity.FAULTS if not f.tests and not f.handling.startswith("open")]
    assert not untested and len(fidelity.FAULTS) == 14


def test_the_count_of_differences_is_the_one_the_table_states(table):
    differing = [row for row in table if row["status"] != "same"]
    assert f"{len(table)} settings; {len(differing)} differ" in fidelity.DOC.read_text()
    assert 0 < len(differing) < len(table)


def test_reference_links_reach_the_table():
    assert "docs/fidelity.md" in (ROOT / "README.md").read_text()
    assert "docs/fidelity.md" in (ROOT / "config" / "README.md").read_text()


# The reference's unit alternatives (mm_gad_no_llm, method-reference §4.3), each plural spelled out.
REFERENCE_UNITS = (
    "°", "°C", "°F", "%", "meter", "meters", "cm", "mm", "km", "inch", "inches", "ft", "feet",
    "kg", "mg", "lb", "lbs", "pound", "pounds", "second", "seconds", "sec", "minute", "minutes", "min",
    "hour", "hours", "hr", "day", "days", "year", "years", "plate", "plates", "piece", "pieces", "item",
    "items", "people", "person", "persons", "student", "students", "time", "times", "dm", "ml", "mL",
    "liter", "liters", "litre", "litres", "cm²", "cm³", "m²", "m³",
    "元", "米", "厘米", "千克", "克", "度", "个", "条", "张", "块", "人", "次",
)  # fmt: skip


def test_every_unit_of_the_reference_list_is_stripped_by_rule(monkeypatch):
    monkeypatch.setattr("prism.core.reward._math_verify", lambda prediction, truth: False)
    rejected = [
        unit
        for unit in REFERENCE_UNITS
        for answer in (f"12 {unit}", f"12{unit}")
        if reward.compute_score(format_response("a", "b", answer), "12")["acc"] != 1.0
    ]
    assert not rejected
    assert len({u.lower() for u in REFERENCE_UNITS}) >= 30


def test_warmup_leaves_over_long_lines_out_whole(tiny_dir, tmp_path):
    """B8: a line whose rendering is longer than max_length is left out, never cut; one that fits is kept
    whole."""
    from prism.core.modeling import load_processor
    from prism.discriminator.pairs import WarmupLines, pairs_of
    from prism.discriminator.stages import fitting_lines, render_pairs

    Image.new("RGB", (32, 32), "red").save(tmp_path / "red.png")
    lines = [
        {"prompt": "How many shapes?", "image": "red.png", "teacher_caption": "one square",
         "teacher_cot": "one. " * n, "student_caption": "a circle", "student_cot": "two"}
        for n in (1, 400)
    ]  # fmt: skip
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    processor, data = load_processor(str(tiny_dir)), WarmupLines(tmp_path / "pairs.jsonl")
    lengths = render_pairs(processor, data, pairs_of([0, 1]), 560, True)["attention_mask"].sum(-1)
    short, long = lengths.view(2, 2, 2).amax(dim=(0, 2)).tolist()
    cfg = {"max_image_side": 560, "max_length": (short + long) // 2}
    assert fitting_lines(processor, data, [0, 1], cfg, True) == [0]
    assert render_pairs(processor, data, pairs_of([1]), 560, True)["attention_mask"].sum(-1).max() == long


def test_upcycling_draws_noise_and_router_at_the_configured_std(tiny_dir):
    from prism.core.modeling import load_model
    from prism.discriminator.upcycle import upcycle

    spec = fidelity.paper_config()["discriminator"]["upcycle"]
    spec = {k: v for k, v in spec.items() if k != "resources"}
    dense = load_model(str(tiny_dir))
    moe = upcycle(dense, **spec)
    dense_mlp, moe_mlp = dense.model.language_model.layers[0].mlp, moe.model.language_model.layers[0].mlp
    gate_up = torch.cat([dense_mlp.gate_proj.weight, dense_mlp.up_proj.weight])
    noise = moe_mlp.experts.gate_up_proj.float() - gate_up.float()
    assert noise.std().item() == pytest.approx(spec["noise_std"], rel=0.05)
    assert moe_mlp.gate.weight.float().std().item() == pytest.approx(spec["router_std"], rel=0.15)
    assert moe.config.text_config.router_aux_loss_coef == spec["router_aux_loss_coef"]


def test_a_singleton_group_keeps_its_score_as_the_reference_does():
    from prism.core.advantages import EPS, group_normalize

    out = group_normalize(torch.tensor([3.0, 1.0, 2.0]), torch.tensor([0, 1, 1]))
    assert out[0].item() == pytest.approx(3.0 / (1 + EPS))
