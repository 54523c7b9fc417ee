"""The tables and charts from a synthetic set of benchmark JSONs: rows, columns, averages, differences
from the paper, and a missing benchmark left empty with a warning."""

import csv
import json
import xml.etree.ElementTree as ET

import pytest

from conftest import ROOT
from prism.core.manifest import write_manifest
from prism.tables.__main__ import main
from prism.tables.ablations import main as ablations_main

SVG = "{http://www.w3.org/2000/svg}"
POLICY = {"name": "qwen3-vl-4b", "model": "qwen3-vl-4b", "paper_name": "Qwen3-VL-4B"}
CONFIG = {
    "benchmarks": ["mathvista", "mmmu", "hallusionbench"],
    "variants": ["sft", "prism-grpo"],
    "policies": [POLICY],
    "paper_results": str(ROOT / "config" / "paper_results.csv"),
}
SCORES = {("sft", "mathvista"): 70.0, ("sft", "mmmu"): 50.0, ("sft", "hallusionbench"): 69.0}
SCORES |= {("prism-grpo", "mathvista"): 80.0, ("prism-grpo", "mmmu"): 60.0}  # hallusionbench missing


def read_csv(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def built(tmp_path, capsys):
    for (variant, benchmark), score in SCORES.items():
        path = tmp_path / "eval" / POLICY["name"] / variant / f"{benchmark}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"score": score, "metric": "acc,none"}))
    runs = []
    for name, rows in {
        "rl/qwen3-vl-4b/prism-grpo": [(1, 0.4), (2, 0.5)],
        "sft/qwen3-vl-4b": [(1, 2.0)],
    }.items():
        run = tmp_path / "models" / name
        write_manifest(run / "manifest.json", name.split("/")[0], [], {})
        column = "reward" if name.startswith("rl") else "loss"
        (run / "metrics.csv").write_text(f"step,{column}\n" + "".join(f"{s},{v}\n" for s, v in rows))
        runs.append(str(run))
    out = tmp_path / "tables"
    args = ["--config", json.dumps(CONFIG), "--eval-root", str(tmp_path / "eval"), "--out", str(out)]
    main([*args, "--models-root", str(tmp_path / "models"), "--runs", *runs])
    return out, capsys.readouterr().err


def test_main_table_in_the_papers_layout(built):
    out, _ = built
    rows = read_csv(out / "main.csv")
    assert list(rows[0]) == ["policy", "variant", "MathVista", "MMMU", "HallusionBench", "Avg"]
    assert rows[0] == {
        "policy": "qwen3-vl-4b",
        "variant": "sft",
        "MathVista": "70.0",
        "MMMU": "50.0",
        "HallusionBench": "69.0",
        "Avg": "63.0",
    }


def test_a_missing_benchmark_leaves_its_cell_and_the_average_empty_with_a_warning(built):
    out, warnings = built
    row = read_csv(out / "main.csv")[1]
    assert (row["variant"], row["HallusionBench"], row["Avg"]) == ("prism-grpo", "", "")
    assert "warning: qwen3-vl-4b prism-grpo HallusionBench: no score in" in warnings
    assert warnings.count("warning:") == 1


def test_each_cell_beside_the_paper_with_the_difference(built):
    out, _ = built
    versus = {(r["variant"], r["benchmark"]): r for r in read_csv(out / "main_vs_paper.csv")}
    assert len(versus) == 2 * 4
    # the paper: Qwen3-VL-4B sft MathVista 71.5, prism-grpo MathVista 77.9, sft Avg over 7 benchmarks
    assert (versus["sft", "MathVista"]["paper"], versus["sft", "MathVista"]["diff"]) == ("71.5", "-1.5")
    assert versus["prism-grpo", "MathVista"]["diff"] == "2.1"
    assert versus["prism-grpo", "HallusionBench"]["ours"] == "" and versus["prism-grpo", "Avg"]["diff"] == ""


def drawn(path, prefix):
    """The ids of what a matplotlib chart drew (bars, error bars, lines) that start with `prefix`."""
    return [
        g.get("id") for g in ET.parse(path).getroot().iter(f"{SVG}g") if g.get("id", "").startswith(prefix)
    ]


def test_charts_draw_every_score_and_every_training_curve(built):
    out, _ = built
    chart = out / "ours_vs_paper_qwen3-vl-4b.svg"
    assert len(drawn(chart, "ours ")) == 5 + 1  # five scores and sft's Avg; prism-grpo's Avg is missing
    assert "ours sft Avg 63.0" in drawn(chart, "ours ")
    assert len(drawn(chart, "paper ")) == 2 * 4  # the paper has every cell of both rows
    assert drawn(chart, "ci ") == []  # these records keep no samples to draw intervals from
    assert drawn(out / "curves_rl.svg", "curve ") == ["curve rl/qwen3-vl-4b/prism-grpo reward"]
    assert len(drawn(out / "curves_sft.svg", "curve ")) == 1
    assert "no curve recorded" in (out / "curves_align.svg").read_text()


def write_record(root, variant, benchmark, acc, perception):
    path = root / POLICY["name"] / variant / f"{benchmark}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = {"acc": acc, "perception": perception}
    path.write_text(json.dumps({"score": 100 * sum(acc) / len(acc), "samples": samples}))


def test_intervals_over_samples_perception_beside_reasoning_and_paired_differences(tmp_path):
    # 100 items per benchmark; prism answers 10 more right than sft on mathvista, the same on mmmu
    for variant, right in {"sft": 50, "prism": 60}.items():
        write_record(
            tmp_path / "eval", variant, "mathvista", [1.0] * right + [0.0] * (100 - right), [0.5] * 100
        )
        write_record(tmp_path / "eval", variant, "mmmu", [1.0] * 80 + [0.0] * 20, [1.0] * 50 + [0.0] * 50)
    config = CONFIG | {"benchmarks": ["mathvista", "mmmu"], "variants": ["sft", "prism"]}
    out = tmp_path / "tables"
    main(["--config", json.dumps(config), "--eval-root", str(tmp_path / "eval"), "--out", str(out)])
    ci = {(r["variant"], r["benchmark"]): r for r in read_csv(out / "main_ci.csv")}
    low, high = float(ci["sft", "MathVista"]["ci_low"]), float(ci["sft", "MathVista"]["ci_high"])
    assert 39 < low < 42 and 58 < high < 61  # 50 of 100: +-1.96 x 5 points
    assert ci["sft", "Avg"]["score"] == "65.0" and float(ci["sft", "Avg"]["ci_high"]) - 65 < 8
    perception = {r["variant"]: r for r in read_csv(out / "perception.csv")}
    assert (perception["sft"]["perception"], perception["sft"]["reasoning"]) == ("50.0", "65.0")
    assert perception["prism"]["reasoning"] == "70.0"
    assert float(perception["sft"]["perception_low"]) < 50 < float(perception["sft"]["perception_high"])
    differences = {r["measure"]: r for r in read_csv(out / "differences.csv")}
    assert differences["score"]["variant"] == "prism" and differences["score"]["versus"] == "sft"
    assert differences["score"]["diff"] == "5.0"
    # paired: the extra right answers are the same ten items every resample, so the interval is tight
    assert 0 < float(differences["score"]["ci_low"]) < 5 < float(differences["score"]["ci_high"]) < 10
    assert (differences["perception"]["diff"], differences["perception"]["ci_low"]) == ("0.0", "0.0")
    chart = out / "ours_vs_paper_qwen3-vl-4b.svg"
    assert len(drawn(chart, "ci ")) == 2 * 3  # an error bar on each of our bars


def test_ablation_rows_in_the_papers_layout_beside_its_numbers(tmp_path, capsys):
    for variant, score in {"prism-grpo": 80.0, "sft-grpo": 70.0, "ablation-no_sft": 50.0}.items():
        for benchmark in CONFIG["benchmarks"]:
            path = tmp_path / "eval" / POLICY["name"] / variant / f"{benchmark}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"score": score}))
    rows = [
        ["prism-grpo (full)", "prism-grpo"],
        ["without alignment", "sft-grpo"],
        ["without SFT", "ablation-no_sft"],
        ["dense 4B discriminator", "ablation-dense_discriminator"],  # not evaluated yet
    ]
    config = {
        "benchmarks": CONFIG["benchmarks"],
        "policy": POLICY,
        "rows": rows,
        "paper_results": str(ROOT / "config" / "paper_ablations.csv"),
    }
    out = tmp_path / "tables"
    ablations_main(["--config", json.dumps(config), "--eval-root", str(tmp_path / "eval"), "--out", str(out)])
    assert sorted(path.name for path in out.iterdir()) == ["ablations.csv", "ablations_vs_paper.csv"]
    table = read_csv(out / "ablations.csv")
    assert list(table[0]) == ["model", "setting", "variant", "MathVista", "MMMU", "HallusionBench", "Avg"]
    assert [(r["setting"], r["Avg"]) for r in table] == [
        ("prism-grpo (full)", "80.0"),
        ("without alignment", "70.0"),
        ("without SFT", "50.0"),
        ("dense 4B discriminator", ""),
    ]
    assert table[0]["model"] == "Qwen3-VL-4B"
    versus = {(r["setting"], r["benchmark"]): r for r in read_csv(out / "ablations_vs_paper.csv")}
    # the paper's "without SFT" row: MathVista 62.4
    assert (versus["without SFT", "MathVista"]["paper"], versus["without SFT", "MathVista"]["diff"]) == (
        "62.4",
        "-12.4",
    )
    assert versus["dense 4B discriminator", "MathVista"]["diff"] == ""
    warnings = capsys.readouterr().err
    assert "warning: ablation 'dense 4B discriminator' MathVista: no score in" in warnings
