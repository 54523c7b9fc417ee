"""Data preparation: fetched sets with broken rows are checked row by row; the bad rows are left out and
reported by count and reason, and a set that is mostly bad stops the job without a manifest."""

import io
import json
import subprocess
import sys

import pandas as pd
import pytest

from prism.data import synthetic
from prism.data.__main__ import main as make_data
from prism.data.__main__ import verl_row
from prism.data.formats import ALIGN_COLUMNS, RL_COLUMNS, read_parquet_rows, read_sft_examples


def prepare(name, raw, out, max_rejected_fraction=0.5, spec=None) -> subprocess.CompletedProcess:
    settings = json.dumps({"max_rejected_fraction": max_rejected_fraction})
    command = ["-m", "prism.data", "prepare", "--name", name, "--config", json.dumps(spec or {})]
    command += ["--settings", settings]
    command += ["--raw", str(raw)]
    return subprocess.run(
        [sys.executable, *command, "--out", str(out)], capture_output=True, text=True, timeout=120
    )


def fetched(directory, rows: list[dict]) -> None:
    """A downloaded parquet set, with the manifest fetch_dataset writes."""
    directory.mkdir()
    pd.DataFrame(rows).to_parquet(directory / "rl_training_data.parquet")
    (directory / "manifest.json").write_text("{}")


def png() -> bytes:
    buffer = io.BytesIO()
    synthetic.examples(1, 0)[0].scene.image().save(buffer, format="PNG")
    return buffer.getvalue()


def teacher_row(example, i) -> dict:
    response = example.teacher_response()
    cut = response.index("</caption>") + len("</caption>")
    return {**verl_row(example, i, "train"), "teacher_caption": response[:cut], "teacher_cot": response[cut:]}


def broken_rl_rows() -> list[dict]:
    rows = [verl_row(example, i, "train") for i, example in enumerate(synthetic.examples(20, 0))]
    rows[1]["reward_model"] = {"style": "rule", "ground_truth": " "}
    rows[2]["reward_model"] = {"style": "rule", "ground_truth": ""}
    rows[3]["images"] = rows[3]["images"] * 2  # two images, one <image> in the prompt
    rows[4]["images"] = [{"bytes": b"not an image"}]
    rows[5]["prompt"] = [{"role": "system", "content": "<image>no user turn"}]
    return rows


def test_rl_rows_that_would_fail_later_are_left_out_and_counted_by_reason(tmp_path):
    fetched(tmp_path / "raw", broken_rl_rows())
    result = prepare("rl", tmp_path / "raw", tmp_path / "rl")
    assert result.returncode == 0, result.stderr
    assert "kept 15 of 20 rows" in result.stdout
    assert "rejected 2: empty answer (first at rl_training_data.parquet row 1)" in result.stdout
    assert "rejected 1: images ≠ <image> placeholders (first at rl_training_data.parquet row 3)" in (
        result.stdout
    )
    assert "rejected 1: unreadable image" in result.stdout
    assert "rejected 1: prompt is not a chat list with a user turn" in result.stdout
    report = json.loads((tmp_path / "rl" / "manifest.json").read_text())["metrics"]
    assert (report["read"], report["kept"]) == (20, 15)
    assert report["rejected"] == {
        "empty answer": 2,
        "images ≠ <image> placeholders": 1,
        "unreadable image": 1,
        "prompt is not a chat list with a user turn": 1,
    }
    rows = read_parquet_rows(tmp_path / "rl" / "train.parquet", RL_COLUMNS)  # what the RL stage reads
    assert [row["extra_info"]["index"] for row in rows] == [0, *range(6, 20)]
    assert rows[0]["prompt"][1]["role"] == "user" and rows[0]["image"].size == (64, 64)


def test_a_set_mostly_rejected_stops_without_a_manifest_naming_the_reasons(tmp_path):
    fetched(tmp_path / "raw", broken_rl_rows())
    result = prepare("rl", tmp_path / "raw", tmp_path / "rl", max_rejected_fraction=0.02)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output
    assert "5 of 20 rows rejected, more than data.max_rejected_fraction=0.02" in output
    assert "2 empty answer" in output and "no manifest written" in output
    assert not (tmp_path / "rl" / "manifest.json").exists()


def test_alignment_rows_need_both_teacher_segments_and_the_columns(tmp_path):
    rows = [teacher_row(example, i) for i, example in enumerate(synthetic.examples(10, 0))]
    rows[0]["teacher_caption"], rows[1]["teacher_cot"] = "", "  "
    fetched(tmp_path / "raw", rows)
    result = prepare("align", tmp_path / "raw", tmp_path / "align")
    assert result.returncode == 0, result.stderr
    assert "rejected 1: empty teacher caption" in result.stdout
    assert "rejected 1: empty teacher reasoning" in result.stdout
    assert len(read_parquet_rows(tmp_path / "align" / "train.parquet", ALIGN_COLUMNS)) == 8

    plain = [verl_row(example, i, "train") for i, example in enumerate(synthetic.examples(4, 0))]
    fetched(tmp_path / "plain", plain)
    result = prepare("align", tmp_path / "plain", tmp_path / "align2")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "missing columns ['teacher_caption', 'teacher_cot']" in result.stderr


def test_teachers_longer_than_the_response_budget_are_left_out_and_counted(tmp_path, tiny_dir):
    """The reference's length check on caption + reasoning measured the batch dimension (B6): here the
    policy's tokens are counted, and a teacher over max_response_length is left out, never truncated."""
    from transformers import AutoTokenizer

    rows = [teacher_row(example, i) for i, example in enumerate(synthetic.examples(6, 0))]
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)

    def tokens(row):
        texts = [row["teacher_caption"], row["teacher_cot"]]
        return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])

    limit = max(tokens(row) for row in rows)
    rows[2]["teacher_cot"] += " and so on" * 20
    assert tokens(rows[2]) > limit >= max(tokens(row) for i, row in enumerate(rows) if i != 2)
    fetched(tmp_path / "raw", rows)
    spec = {"teacher_tokens": {"max_tokens": limit, "tokenizer_dirs": [str(tiny_dir)]}}
    result = prepare("align", tmp_path / "raw", tmp_path / "align", spec=spec)
    assert result.returncode == 0, result.stderr
    reason = f"teacher caption + reasoning over max_response_length={limit} tokens"
    assert f"rejected 1: {reason}" in result.stdout
    kept = read_parquet_rows(tmp_path / "align" / "train.parquet", ALIGN_COLUMNS)
    assert [row["teacher_cot"] for row in kept] == [row["teacher_cot"] for row in rows[:2] + rows[3:]]
    manifest = json.loads((tmp_path / "align" / "manifest.json").read_text())
    assert manifest["metrics"]["rejected"] == {reason: 1}


def conversation(question: str, answer: str, images: list) -> dict:
    return {
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
        "images": images,
    }


def test_sft_conversations_in_either_sharegpt_shape_are_checked_and_registered(tmp_path):
    raw = tmp_path / "raw"
    (raw / "imgs").mkdir(parents=True)
    (raw / "imgs" / "a.png").write_bytes(png())
    (raw / "manifest.json").write_text("{}")
    good = conversation("<image>How many?", "<answer>2</answer>", ["imgs/a.png"])
    lines = [
        good,
        conversation("<image>How many?", "<answer>2</answer>", []),  # placeholder without an image
        conversation("<image><image>Compare", "<answer>A</answer>", ["imgs/a.png"]),
        conversation("<image>How many?", "  ", ["imgs/a.png"]),
        conversation("<image>How many?", "<answer>2</answer>", ["imgs/missing.png"]),
        {"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}]},
    ]
    (raw / "part1.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n{broken\n")
    legacy = {  # the from/value shape, image embedded as bytes, in a parquet
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "<image>Colour?"},
            {"from": "gpt", "value": "<answer>red</answer>"},
        ],
        "images": [{"bytes": png(), "path": None}],
    }
    pd.DataFrame([legacy]).to_parquet(raw / "part2.parquet")

    result = prepare("sft", raw, tmp_path / "sft", max_rejected_fraction=0.8)
    assert result.returncode == 0, result.stderr
    assert "kept 2 of 8 rows" in result.stdout
    report = json.loads((tmp_path / "sft" / "manifest.json").read_text())["metrics"]
    assert report["rejected"] == {
        "images ≠ <image> placeholders": 2,
        "empty assistant reply": 1,
        "image file missing": 1,
        "turns do not alternate user / assistant": 1,
        "not valid JSON": 1,
    }
    info = json.loads((tmp_path / "sft" / "dataset_info.json").read_text())
    assert info["prism_sft"]["formatting"] == "sharegpt"
    assert info["prism_sft"]["columns"] == {"messages": "messages", "images": "images"}
    examples = read_sft_examples(tmp_path / "sft")  # the CPU engine reads what LLaMA-Factory reads
    assert [e["response"] for e in examples] == ["<answer>2</answer>", "<answer>red</answer>"]
    written = [json.loads(line) for line in (tmp_path / "sft" / "prism_sft.jsonl").read_text().splitlines()]
    assert written[1]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert [(tmp_path / "sft" / e["images"][0]).is_file() for e in written] == [True, True]


def test_warmup_lines_need_every_segment_and_their_image(tmp_path):
    raw = tmp_path / "raw"
    spec = {"source": "synthetic", "synthetic": {"examples": 6, "seed": 0}}
    make_data(["dataset", "--name", "warmup", "--config", json.dumps(spec), "--out", str(raw)])
    lines = [json.loads(line) for line in (raw / "warmup_pairwise.jsonl").read_text().splitlines()]
    lines[0]["student_cot"] = ""
    lines[1]["image"] = "images/gone.png"
    (raw / "warmup_pairwise.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    result = prepare("warmup", raw, tmp_path / "warmup")
    assert result.returncode == 0, result.stderr
    assert "kept 4 of 6 rows" in result.stdout
    assert "rejected 1: empty student_cot" in result.stdout
    assert "rejected 1: image file missing" in result.stdout


def test_an_sft_set_from_several_repos_is_prepared_whole_or_in_chosen_parts(tmp_path):
    raw = tmp_path / "raw"
    spec = {"source": "synthetic", "synthetic": {"examples": 12, "seed": 0, "parts": ["distill", "public"]}}
    make_data(["dataset", "--name", "sft", "--config", json.dumps(spec), "--out", str(raw)])
    (raw / "public" / "README.md").write_text("a repo's card")  # not data
    whole = prepare("sft", raw, tmp_path / "whole", max_rejected_fraction=0)
    assert whole.returncode == 0, whole.stderr
    assert "kept 12 of 12 rows" in whole.stdout  # each part's registry is read, not taken for data

    def subset(parts, out):
        spec = json.dumps({"parts": parts})
        command = ["-m", "prism.data", "prepare", "--name", "sft", "--config", spec, "--raw", str(raw)]
        command += ["--settings", '{"max_rejected_fraction": 0}']
        return subprocess.run([sys.executable, *command, "--out", str(out)], capture_output=True, text=True)

    result = subset(["distill"], tmp_path / "distill")
    assert result.returncode == 0, result.stderr
    assert "kept 6 of 6 rows" in result.stdout
    questions = {e["prompt"][-1]["content"] for e in read_sft_examples(tmp_path / "distill")}
    assert questions < {e["prompt"][-1]["content"] for e in read_sft_examples(tmp_path / "whole")}
    missing = subset(["mmr1"], tmp_path / "mmr1")
    assert missing.returncode != 0 and not (tmp_path / "mmr1" / "manifest.json").exists()
    assert "no part ['mmr1']; its parts are ['distill', 'public']" in missing.stderr


@pytest.mark.parametrize("name", ["sft", "warmup", "align", "rl"])
def test_tiny_mode_synthetic_sets_pass_the_same_preparation_whole(tmp_path, name):
    spec = {"source": "synthetic", "synthetic": {"examples": 8, "seed": 0}}
    make_data(["dataset", "--name", name, "--config", json.dumps(spec), "--out", str(tmp_path / "raw")])
    result = prepare(name, tmp_path / "raw", tmp_path / name, max_rejected_fraction=0)
    assert result.returncode == 0, result.stderr
    assert "kept 8 of 8 rows" in result.stdout and "none rejected" in result.stdout
