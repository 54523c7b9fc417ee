"""The RLVR reward as verl calls it (method-reference §4.3): 0.8·accuracy + 0.2·format, behind a gate."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from prism.core.segments import format_response
from prism.verl.reward import compute_score


def reply(answer: str) -> str:
    return format_response("- a red square left of a blue circle", "Count the shapes: two.", answer)


CAPTION, THINK, ANSWER = "<caption>two shapes</caption>", "<think>count them</think>", "<answer>2</answer>"

CASES = [
    # The format gate: exactly caption, think, answer, in that order, with only whitespace around them.
    ("well formed", reply("2"), "2", 1.0),
    ("surrounding whitespace", "\n  " + reply("2") + "\n\n", "2", 1.0),
    ("blocks on one line", CAPTION + THINK + ANSWER, "2", 1.0),
    ("no caption", THINK + ANSWER, "2", 0.0),
    ("no think", CAPTION + ANSWER, "2", 0.0),
    ("no answer", CAPTION + THINK, "2", 0.0),
    ("think before caption", THINK + CAPTION + ANSWER, "2", 0.0),
    ("answer before think", CAPTION + ANSWER + THINK, "2", 0.0),
    # The reference's gate lets a repeated block through and grades the first answer: so do we.
    ("a second answer block", CAPTION + THINK + ANSWER + "<answer>3</answer>", "2", 1.0),
    ("a second caption block", CAPTION + CAPTION + THINK + ANSWER, "2", 1.0),
    ("text before the blocks", "Sure! " + reply("2"), "2", 0.0),
    ("text after the blocks", reply("2") + " Hope this helps.", "2", 0.0),
    ("text between blocks", CAPTION + " so " + THINK + ANSWER, "2", 0.0),
    ("unclosed answer", CAPTION + THINK + "<answer>2", "2", 0.0),
    ("upper-case tags", "<CAPTION>x</CAPTION><THINK>y</THINK><ANSWER>2</ANSWER>", "2", 0.0),
    ("plain text", "The answer is 2.", "2", 0.0),
    ("empty answer", reply(""), "2", 0.2),
    ("blank answer", reply("   "), "2", 0.2),
    ("over-long answer", reply("a" * 1100), "a" * 1100, 0.2),
    # Multiple-choice letters.
    ("letter", reply("B"), "B", 1.0),
    ("bracketed letter", reply("(B)"), "B", 1.0),
    ("letter with a period", reply("B."), "B", 1.0),
    ("letter in a phrase", reply("The answer is C"), "C", 1.0),
    ("option phrase", reply("Option D is right"), "D", 1.0),
    ("wrong letter", reply("C"), "B", 0.2),
    ("letter of an option ground truth", reply("A"), "(A) 12 cm", 1.0),
    ("option text for a letter ground truth", reply("(C) a circle"), "C", 1.0),
    # Numbers: fractions vs. decimals, relative tolerance 1e-6, zero exactly.
    ("decimal for a fraction", reply("0.5"), "1/2", 1.0),
    ("latex fraction for a decimal", reply("\\frac{1}{2}"), "0.5", 1.0),
    ("dfrac", reply("\\dfrac{3}{4}"), "0.75", 1.0),
    ("rounded decimal", reply("0.333"), "1/3", 0.2),
    ("trailing zeros", reply("2.0"), "2", 1.0),
    ("thousands separator", reply("1,234"), "1234", 1.0),
    ("wrong sign", reply("-3"), "3", 0.2),
    ("zero", reply("0.0"), "0", 1.0),
    ("near zero is not zero", reply("1e-7"), "0", 0.2),
    ("math-verify: sqrt", reply("\\sqrt{4}"), "2", 1.0),
    ("math-verify: dollar math", reply("$x = 2$"), "2", 1.0),
    # Units.
    ("unit on the answer only", reply("5 cm"), "5", 1.0),
    ("same unit", reply("5 cm"), "5cm", 1.0),
    ("degrees", reply("30°"), "30", 1.0),
    ("percent", reply("45%"), "45", 1.0),
    ("wrong value, same unit", reply("5 kg"), "6 kg", 0.2),
    ("latex text unit", reply("\\text{3 cm}"), "3 cm", 1.0),
    ("millilitres", reply("20 mL"), "20", 1.0),
    ("a speed", reply("10 m/s"), "10", 1.0),
    ("an area", reply("8 cm^2"), "8", 1.0),
    ("an area in latex", reply("8 \\text{cm}^2"), "8", 1.0),
    ("unit case", reply("20 ML"), "20 ml", 1.0),
    ("yuan", reply("12元"), "12", 1.0),
    ("centimetres in Chinese", reply("5 厘米"), "5", 1.0),
    ("wrong count in Chinese", reply("7个"), "8", 0.2),
    ("coordinates as decimals", reply("(1, 2)"), "(1.0, 2.0)", 1.0),
    ("coordinates swapped", reply("(2, 1)"), "(1, 2)", 0.2),
    # Words.
    ("case", reply("Red"), "red", 1.0),
    ("markdown bold", reply("**blue**"), "blue", 1.0),
    ("trailing period", reply("circle."), "circle", 1.0),
    ("wrong word", reply("square"), "circle", 0.2),
    # Several values: same count, same order.
    ("list", reply("1, 2"), "1,2", 1.0),
    ("list out of order", reply("2, 1"), "1,2", 0.2),
    ("semicolons for commas", reply("1; 2; 3"), "1,2,3", 1.0),
    ("numbered items", reply("(1) 3 (2) 4"), "3, 4", 1.0),
    ("too few values", reply("1, 2"), "1, 2, 3", 0.2),
    ("a coordinate is one value", reply("(1, 2)"), "(1, 2)", 1.0),
]


@pytest.mark.parametrize(("response", "truth", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_reward_table(response, truth, expected):
    result = compute_score("mm_gad", response, truth, {})
    assert result["score"] == pytest.approx(expected)
    assert result["score"] == pytest.approx(0.8 * result["acc"] + 0.2 * result["format"])


def test_weights_come_from_config():
    weights = {"accuracy_weight": 0.9, "format_weight": 0.1}
    assert compute_score("mm_gad", reply("2"), "2", None, **weights)["score"] == 1.0
    assert compute_score("mm_gad", reply("3"), "2", None, **weights)["score"] == pytest.approx(0.1)


def test_same_scores_from_worker_threads():
    """verl scores in Ray worker threads: no signal-based timeout may break there (math-verify's would)."""
    args = [("mm_gad", response, truth, {}) for _, response, truth, _ in CASES]
    in_main = [compute_score(*a) for a in args]
    with ThreadPoolExecutor(max_workers=4) as pool:
        in_threads = list(pool.map(lambda a: compute_score(*a), args))
    assert in_threads == in_main


@pytest.mark.parametrize(
    ("answer", "truth"),
    [("12元", "12"), ("3米", "3"), ("5 厘米", "5"), ("2.5千克", "2.5"), ("20 mL", "20"), ("10 m/s", "10")],
)
def test_units_of_the_reference_list_pass_by_rule_without_math_verify(monkeypatch, answer, truth):
    """The reference strips its 30+ English and Chinese units before the numeric check (§4.3); the
    math-verify fallback must not be what accepts them."""
    monkeypatch.setattr("prism.core.reward._math_verify", lambda prediction, truth: False)
    assert compute_score("mm_gad", reply(answer), truth, {})["score"] == 1.0


def test_an_equivalent_answer_of_the_row_counts_as_the_ground_truth():
    """The reference's math-verify data sources list equivalent answers beside the ground truth (§4.3)."""
    listed = {"equivalent_answers": ["twelve", "a dozen"]}
    assert compute_score("math-77k", reply("a dozen"), "12", listed)["score"] == 1.0
    assert compute_score("math-77k", reply("a dozen"), "12", {})["score"] == pytest.approx(0.2)
    assert compute_score("math-77k", reply("eleven"), "12", listed)["score"] == pytest.approx(0.2)


def test_preparation_hands_the_reward_the_rows_equivalent_answers(tmp_path):
    """verl gives a custom reward function the row's extra_info, not its reward_model: the prepared set
    carries the equivalents there, `__EMPTY__` meaning none."""
    import pandas as pd

    from prism.data import synthetic
    from prism.data.__main__ import verl_row
    from prism.data.formats import RL_COLUMNS, read_parquet_rows
    from prism.data.prepare import prepare

    rows = [verl_row(example, i, "train") for i, example in enumerate(synthetic.examples(2, seed=0))]
    rows[0]["reward_model"] |= {"equivalent_answers": ["twelve"]}
    rows[1]["reward_model"] |= {"equivalent_answers": ["__EMPTY__"]}
    (tmp_path / "raw").mkdir()
    pd.DataFrame(rows).to_parquet(tmp_path / "raw" / "rl.parquet")
    prepare("rl", tmp_path / "raw", tmp_path / "rl", 0.0)
    prepared = pd.read_parquet(tmp_path / "rl" / "train.parquet").to_dict("records")
    assert [list(row["extra_info"]["equivalent_answers"]) for row in prepared] == [["twelve"], []]
    assert prepared[0]["extra_info"]["question"] == rows[0]["extra_info"]["question"]
    read = read_parquet_rows(tmp_path / "rl" / "train.parquet", RL_COLUMNS)  # as the CPU RL engine reads it
    assert [row["equivalent_answers"] for row in read] == [("twelve",), ()]
