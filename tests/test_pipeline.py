"""The tiny pipeline end to end in a copy of the workflow: every stage runs, learns, and reruns precisely.

The run is conftest's `tiny_run`, the one the Slurm tests read too: the DAG runs once per session."""

import csv
import json
import re
import subprocess
import sys

import pytest
import yaml
from test_reruns import planned

from conftest import TARGETS, TINY, files_holding_secrets, snakemake, write_config

pytestmark = pytest.mark.pipeline
RESULTS, WORK = "tiny/results", "tiny/work"  # config/tiny.yaml's paths


@pytest.fixture(scope="module")
def finished(tiny_run):
    return tiny_run


def read_csv(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_table_has_one_full_row_per_variant(finished):
    rows = read_csv(finished / f"{RESULTS}/tables/main.csv")
    variants = yaml.safe_load((finished / "config/config.yaml").read_text())["eval"]["variants"]
    assert [(r["policy"], r["variant"]) for r in rows] == [("tiny", v) for v in variants]
    for row in rows:
        assert all(re.fullmatch(r"\d+\.\d", row[k]) for k in row if k not in ("policy", "variant"))
    versus = read_csv(finished / f"{RESULTS}/tables/main_vs_paper.csv")
    assert len(versus) == len(variants) * 8 and all(r["paper"] == "" for r in versus)
    ablations = read_csv(finished / f"{RESULTS}/tables/ablations.csv")
    paper = read_csv(finished / "config/paper_ablations.csv")
    assert [r["setting"] for r in ablations] == [r["setting"] for r in paper]  # every row, the paper's order
    assert all(r["Avg"] for r in ablations)
    full = [r for r in ablations if r["setting"] in ("prism-grpo (full)", "SFT on 1.37M")]
    assert full[0] | {"setting": ""} == full[1] | {"setting": ""}  # one run, shown twice as in the paper


def test_training_learns(finished):
    sft = read_csv(finished / f"{RESULTS}/models/sft/tiny/metrics.csv")
    first, last = float(sft[0]["loss"]), sum(float(r["loss"]) for r in sft[-10:]) / 10
    assert last < 0.2 * first
    table = {r["variant"]: float(r["Avg"]) for r in read_csv(finished / f"{RESULTS}/tables/main.csv")}
    assert table["sft"] > table["instruct"] + 10  # the random base cannot even keep the format
    warm = json.loads((finished / RESULTS / "models/discriminator/warm/manifest.json").read_text())
    warm = warm["metrics"]
    assert warm["heldout_loss_after"] < warm["heldout_loss_before"]
    assert warm["heldout_acc_after"] > 0.6


def test_every_artifact_has_a_manifest_naming_its_inputs(finished):
    built = [finished / "tiny/inputs", finished / RESULTS]  # config/tiny.yaml's hf_cache and results
    manifests = [path for root in built for path in root.rglob("manifest.json")]
    # models and data sets as built, the prepared sets, bench, sft, disc, align, rl, eval, and the
    # ablations: the SFT subset and its SFT, the dense and text-only discriminators, four alignments, four RL
    # runs and their evaluations
    assert len(manifests) == 2 + 4 + 4 + 1 + 1 + 2 + 1 + 6 + 9 + 1 + 1 + 2 + 4 + 4 + 4
    rl = json.loads((finished / f"{RESULTS}/models/rl/tiny/prism-dapo/manifest.json").read_text())
    assert set(rl["inputs"]) == {
        f"{RESULTS}/models/prism/tiny/manifest.json",
        f"{RESULTS}/data/rl/manifest.json",
    }
    assert rl["config"]["algorithm"]["clip_ratio_high"] == 0.28


def test_each_trained_ablation_changes_its_one_input(finished):
    def manifest(path):
        return json.loads((finished / RESULTS / path / "manifest.json").read_text())

    def sees_images(path):
        return json.loads((finished / RESULTS / path / "discriminator.json").read_text())["sees_images"]

    assert sees_images("models/discriminator/warm") and not sees_images("models/discriminator/text-only")
    text_only = manifest("models/ablations/text_only_discriminator/tiny/prism")["inputs"]
    assert f"{RESULTS}/models/discriminator/text-only/manifest.json" in text_only
    assert f"{RESULTS}/models/sft/tiny/manifest.json" in text_only
    subset = manifest("data/sft-subset")["metrics"]
    assert (subset["parts"], subset["read"], subset["kept"]) == (["gemini_distill"], 384, 384)
    subset_sft = manifest("models/ablations/sft_subset/tiny/sft")
    assert f"{RESULTS}/data/sft-subset/manifest.json" in subset_sft["inputs"]
    assert subset_sft["metrics"]["steps"] * 2 == manifest("models/sft/tiny")["metrics"]["steps"]
    subset_align = manifest("models/ablations/sft_subset/tiny/prism")["inputs"]
    assert f"{RESULTS}/models/ablations/sft_subset/tiny/sft/manifest.json" in subset_align


def test_tiny_sets_pass_the_same_row_checks_as_the_downloads_whole(finished):
    for name in ("sft", "warmup", "align", "rl"):
        manifest = json.loads((finished / f"{RESULTS}/data/{name}/manifest.json").read_text())
        assert manifest["stage"] == f"prepare:{name}"
        assert list(manifest["inputs"]) == [f"tiny/inputs/datasets/{name}/manifest.json"]
        assert manifest["metrics"]["read"] == manifest["metrics"]["kept"] > 0


def test_a_finished_run_has_nothing_to_do(finished):
    result = snakemake(finished, "-n", *TARGETS, *TINY)
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


def rule_counts(workdir, *overlays):
    """Jobs per rule of `snakemake -n` run in the workdir, so that it fingerprints the workdir's code."""
    # one --configfile flag: a second one would replace the first's files
    return dict(planned(workdir, "--configfile", "config/tiny.yaml", *overlays)[0])


def test_one_rl_hyperparameter_reruns_only_its_runs_their_evaluations_and_the_table(finished):
    overlay = write_config(finished, "dapo.yaml", {"rl": {"algorithm": {"dapo": {"clip_ratio_high": 0.3}}}})
    counts = rule_counts(finished, overlay)
    assert counts == {"rl": 2, "evaluate": 2, "tables": 1, "all": 1}


def test_a_code_change_reruns_the_stage_that_runs_it_and_a_comment_nothing(finished):
    module = finished / "prism/rl/cpu.py"
    original = module.read_text()
    try:
        module.write_text(original + "\n# a comment changes no result\n")
        commented = rule_counts(finished)
        module.write_text(original + "\nSTEP_LOG_EVERY = 1\n")
        changed = rule_counts(finished)
    finally:
        module.write_text(original)
    assert commented == {}
    assert changed == {"rl": 6, "evaluate": 6, "tables": 1, "all": 1}  # the main table's runs


def test_report_holds_the_tables_the_comparison_and_the_curves(finished):
    result = snakemake(finished, *TARGETS, *TINY, "--report", "report.html", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = (finished / "report.html").read_text()
    shown = ("main.csv", "main_vs_paper.csv", "ablations.csv", "ours_vs_paper_tiny.svg", "curves_rl.svg")
    assert [name for name in shown if name not in report] == []
    assert [name for name in ("main_ci.csv", "perception.csv", "differences.csv") if name not in report] == []
    curves = (finished / f"{RESULTS}/tables/curves_discriminator.svg").read_text()
    assert 'id="curve ' in curves and "no curve recorded" not in curves
    align = (finished / f"{RESULTS}/tables/curves_align.svg").read_text()
    assert all(f"prism/tiny {metric}" in align for metric in ("perception", "answer_acc", "caption_gap"))


def test_benchmarks_leave_headroom_and_every_cell_has_its_interval(finished):
    rows = read_csv(finished / f"{RESULTS}/tables/main.csv")
    trained = [r for r in rows if r["variant"] != "instruct"]
    columns = [c for c in rows[0] if c not in ("policy", "variant")]
    assert [c for c in columns if all(float(r[c]) >= 95 for r in trained)] == []
    assert [c for c in columns if max(float(r[c]) for r in trained) < 40] == []  # no column all at chance
    cells = read_csv(finished / f"{RESULTS}/tables/main_ci.csv")
    assert len(cells) == len(rows) * len(columns)
    for c in cells:
        low, score, high = float(c["ci_low"]), float(c["score"]), float(c["ci_high"])
        assert low <= score <= high and high - low <= 13, c  # 256 samples: a standard error <= 3.1
    perception = {r["variant"]: r for r in read_csv(finished / f"{RESULTS}/tables/perception.csv")}
    assert set(perception) == {r["variant"] for r in rows}
    assert float(perception["sft"]["perception"]) > float(perception["instruct"]["perception"]) + 10
    assert {r["variant"] for r in read_csv(finished / f"{RESULTS}/tables/differences.csv")} >= {"prism"}


def test_no_secret_reaches_a_result_a_log_the_work_state_or_the_report(finished):
    """The run had HF_TOKEN and WANDB_API_KEY set (to markers); no file it wrote holds them."""
    written = [finished / name for name in (RESULTS, WORK, ".snakemake", "report.html")]
    assert files_holding_secrets(*[path for path in written if path.exists()]) == []


def test_the_plan_puts_each_stages_measured_hours_and_rank_peak_beside_its_estimate(finished):
    """`prism plan --calibrate` on the tiny run: every stage that trains or evaluates recorded Snakemake's
    benchmark and each rank's memory peak in its manifest, and the plan reads both back."""
    result = subprocess.run(
        [sys.executable, "-m", "prism.cli", "plan", *TINY, "--directory", str(finished), "--calibrate", "."],
        cwd=finished,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line.split()[0]: line.split() for line in result.stdout.split("Measured in")[1].splitlines()[2:]}
    for rule in ("sft", "warmup_discriminator", "align", "rl", "evaluate"):
        measured, planned = rows[rule][1].split("/")
        assert measured == planned, rows[rule]  # every job of the stage recorded its benchmark
        assert 0.05 < float(rows[rule][-1]) < 4, rows[rule]  # its largest rank's peak RSS, in GiB
