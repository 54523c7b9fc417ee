"""The algorithm layer both engines share: segments, reward, advantages, discriminator losses."""

import pytest
import torch

from prism.core.advantages import floor_invalid, group_normalize, prism_advantage
from prism.core.losses import alignment_discriminator_loss, bradley_terry
from prism.core.reward import compute_score, judge
from prism.core.segments import format_response, parse_response


def response(answer: str) -> str:
    return format_response("- two red squares", "I count 2 shapes. 2 + 1 = 3.", answer)


def test_segments_split_caption_from_think_and_answer():
    seg = parse_response("  " + response("3") + "\n")
    assert seg.valid
    assert seg.caption == "<caption>\n- two red squares\n</caption>"
    assert seg.reasoning.startswith("<think>") and seg.reasoning.endswith("</answer>")
    assert seg.answer == "3"


@pytest.mark.parametrize(
    "text",
    [
        "<think>x</think><answer>3</answer>",  # no caption
        "<caption>a</caption><answer>3</answer><think>x</think>",  # wrong order
        "The answer is 3. " + response("3"),  # text before the first block
        response("3") + " trailing words",
        "<caption>a</caption><think>x</think>",  # no answer
    ],
)
def test_off_format_responses_are_flagged_not_guessed(text):
    assert not parse_response(text).valid


@pytest.mark.parametrize(
    ("prediction", "truth", "correct"),
    [
        ("3", "3", True),
        ("4", "3", False),
        ("(B)", "B", True),
        ("The answer is C", "C", True),
        ("Answer: B", "C", False),
        ("0.75", "3/4", True),
        ("Red", "red", True),
        ("5 cm", "5cm", True),
        ("1, 2", "1,2", True),
        ("2, 1", "1,2", False),
        ("\\frac{1}{2}", "0.5", True),
        ("$x=2$", "2", True),
        ("1,234", "1234", True),
    ],
)
def test_answer_judge(prediction, truth, correct):
    assert judge(prediction, truth) is correct


def test_reward_is_point_eight_accuracy_plus_point_two_format():
    assert compute_score(response("3"), "3") == {"score": 1.0, "acc": 1.0, "format": 1.0}
    assert compute_score(response("4"), "3") == {"score": pytest.approx(0.2), "acc": 0.0, "format": 1.0}
    assert compute_score("<answer>3</answer>", "3") == {"score": 0.0, "acc": 0.0, "format": 0.0}
    assert compute_score(response(""), "3")["score"] == pytest.approx(0.2)


def test_group_normalize_uses_unbiased_std_per_group():
    values = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0])
    group = torch.tensor([0, 0, 0, 1, 1])
    out = group_normalize(values, group)
    assert out[:3].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-5)
    assert out[3:].tolist() == [0.0, 0.0]  # no spread: no signal


def test_invalid_responses_sit_one_below_the_lowest_valid_score():
    scores = torch.tensor([2.0, -1.0, 0.0, 7.0])
    valid = torch.tensor([True, True, False, False])
    group = torch.tensor([0, 0, 0, 1])
    assert floor_invalid(scores, valid, group).tolist() == [2.0, -1.0, -2.0, -1.0]


def test_prism_advantage_mixes_experts_with_alpha_and_penalises_format():
    caption = torch.tensor([1.0, 2.0, 3.0, 0.0])
    reasoning = torch.tensor([3.0, 2.0, 1.0, 0.0])
    valid = torch.tensor([True, True, True, False])
    group = torch.zeros(4, dtype=torch.long)
    caption_only = prism_advantage(caption, reasoning, valid, group, alpha=1.0, format_penalty=1.5)
    expected_caption = group_normalize(torch.tensor([1.0, 2.0, 3.0, 0.0]), group)
    assert caption_only[:3].tolist() == pytest.approx(expected_caption[:3].tolist(), abs=1e-6)
    assert caption_only[3].item() == pytest.approx(expected_caption[3].item() - 1.5, abs=1e-6)
    all_valid = torch.ones(3, dtype=torch.bool)
    half = prism_advantage(caption[:3], reasoning[:3], all_valid, group[:3], alpha=0.5, format_penalty=1.5)
    # opposite expert rankings cancel at alpha = 0.5
    assert half.tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-5)


def test_bradley_terry_prefers_teacher():
    assert bradley_terry(torch.tensor([5.0]), torch.tensor([-5.0])) < 1e-4
    assert bradley_terry(torch.tensor([0.0]), torch.tensor([0.0])).item() == pytest.approx(0.6931, abs=1e-4)


def test_alignment_discriminator_loss_clips_scores_and_regularises():
    high = torch.tensor([50.0], requires_grad=True)
    low = torch.tensor([-50.0])
    out = alignment_discriminator_loss(high, high, low, low, score_clip=10.0, score_reg_coef=0.001)
    assert out["score_reg"].item() == pytest.approx(100.0)  # every score clipped to +-10
    assert out["caption_acc"].item() == 1.0
    out["loss"].backward()
    assert high.grad.abs().sum() == 0  # beyond the clip there is no gradient


def test_captions_are_scored_against_the_scene_the_generator_drew():
    from prism.data.synthetic import Scene, caption_score
    from prism.eval.cpu import perception

    truth = Scene((0, 2), "red", "circle").truth()
    assert caption_score("<caption>\n- two red circles\n</caption>", truth) == 1.0
    assert caption_score("<caption>\n- two blue circles\n</caption>", truth) == pytest.approx(2 / 3)
    assert caption_score("<caption>\n- one red circle\n</caption>", truth) == pytest.approx(2 / 3)
    assert caption_score("<caption>\n- three green squares\n</caption>", truth) == 0.0
    assert caption_score("<caption>\nred things\n</caption>", truth) == 0.0
    assert perception(format_response("- two red circles", "I count 2 shapes.", "2"), truth) == 1.0
    assert perception("- two red circles", truth) == 0.0  # off the format: no caption to score


def test_benchmarks_grade_difficulty_and_leave_the_training_images_as_they_were():
    from dataclasses import replace

    from prism.data.synthetic import COLOURS, LEVELS, examples, graded_examples

    plain, graded = examples(8, 3, ("count",)), graded_examples(8, 3, ("count",))
    assert [e.scene.level for e in graded] == list(range(LEVELS)) * 2
    assert [(e.question, e.answer) for e in graded] == [(e.question, e.answer) for e in plain]
    assert graded[0].scene.image().tobytes() == plain[0].scene.image().tobytes()

    def shape_pixels(scene):
        return sum(pixel == COLOURS[scene.colour] for pixel in scene.image().get_flattened_data())

    # from level 1 on, no pixel keeps the clean colour, and speckles cover more of the image each level
    assert shape_pixels(plain[1].scene) > 0 and shape_pixels(graded[1].scene) == 0
    scenes = [replace(graded[0].scene, level=level) for level in range(LEVELS)]
    white = [sum(p == (255, 255, 255) for p in scene.image().get_flattened_data()) for scene in scenes]
    assert white == sorted(white, reverse=True) and len(set(white)) == LEVELS
