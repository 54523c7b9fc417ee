"""Stage 3 pieces on CPU tensors: verl's advantage and losses as we call them, DAPO's sampling and penalty."""

import random

import pytest
import torch

from prism.core.advantages import group_normalize
from prism.core.verl_algos import actor_config, grpo_advantage, policy_loss
from prism.rl import cpu as rl


def test_verl_grpo_advantage_is_our_group_normalisation_on_every_response_token():
    scores = torch.tensor([1.0, 0.2, 0.0, 1.0, 0.2, 0.2, 0.2, 0.2])
    mask = torch.ones(8, 5)
    mask[1, 3:] = 0
    advantages = grpo_advantage(scores, mask, [0, 0, 0, 0, 1, 1, 1, 1])
    expected = group_normalize(scores, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))
    assert advantages[:, 0].tolist() == pytest.approx(expected.tolist(), abs=1e-4)
    assert advantages[1, 3:].abs().sum() == 0  # nothing beyond the response
    assert advantages[4:].abs().sum() == 0  # a group without spread teaches nothing


@pytest.mark.parametrize(
    ("loss_mode", "agg", "low", "high", "ratio", "clipped"),
    [
        ("vanilla", "token-mean", 0.2, 0.2, 1.25, True),  # GRPO clips at 1.2
        ("vanilla", "token-mean", 0.2, 0.28, 1.25, False),  # DAPO's clip-higher lets 1.25 through
        ("gspo", "seq-mean-token-mean", 3e-4, 4e-4, 1.25, True),  # GSPO's sequence ratio, tight clip
    ],
)
def test_policy_losses_clip_as_each_algorithm_specifies(loss_mode, agg, low, high, ratio, clipped):
    config = actor_config(loss_mode, agg, low, high, 3.0, rollout_n=2, prompts=1)
    old = torch.zeros(2, 4)
    new = torch.full((2, 4), float(torch.tensor(ratio).log()), requires_grad=True)
    advantages = torch.ones(2, 4)
    loss, metrics = policy_loss(config, old, new, advantages, torch.ones(2, 4))
    loss.backward()
    assert bool(new.grad.abs().sum() == 0) is clipped  # a clipped ratio passes no gradient


def test_on_policy_loss_pushes_up_positive_and_down_negative_responses():
    config = actor_config("vanilla", "token-mean", 0.2, 0.2, 3.0, rollout_n=2, prompts=1)
    log_prob = torch.zeros(2, 3, requires_grad=True)
    advantages = torch.tensor([[1.0] * 3, [-1.0] * 3])
    loss, _ = policy_loss(config, log_prob.detach(), log_prob, advantages, torch.ones(2, 3))
    loss.backward()
    assert (log_prob.grad[0] < 0).all() and (log_prob.grad[1] > 0).all()  # descent raises row 0


def test_overlong_penalty_is_linear_inside_the_buffer():
    lengths = torch.tensor([10, 32, 48, 64])
    penalty = rl.overlong_penalty(lengths, max_length=64, buffer=32, factor=1.0)
    assert penalty.tolist() == pytest.approx([0.0, 0.0, -0.5, -1.0])


class FakeRollouts:
    def __init__(self, texts):
        self.texts = texts


def test_dynamic_sampling_keeps_only_groups_whose_accuracy_varies(monkeypatch):
    rows = [{"ground_truth": str(i), "varies": i % 2 == 0} for i in range(20)]

    def fake_generate(policy, processor, group_rows, max_new_tokens, temperature):
        # groups of prompts marked `varies` get one right answer; the others are all wrong
        texts = []
        for i, row in enumerate(group_rows):
            texts.append(row["ground_truth"] if row["varies"] and i % 4 == 0 else "wrong")
        return FakeRollouts(texts)

    def fake_score(text, truth, *weights):
        return {"score": float(text == truth), "acc": float(text == truth), "format": 1.0}

    monkeypatch.setattr(rl, "generate", fake_generate)
    monkeypatch.setattr(rl, "compute_score", fake_score)
    cfg = {
        "rollouts_per_prompt": 4,
        "prompts_per_step": 3,
        "max_response_length": 8,
        "temperature": 1.0,
        "accuracy_weight": 0.8,
        "format_weight": 0.2,
    }
    algo = {"dynamic_sampling": {"enable": True, "max_num_gen_batches": 5, "gen_prompts_per_step": 4}}
    kept, batches = rl.sample_groups(None, None, rows, cfg, algo, random.Random(0))
    assert len(kept) == 3
    for _rollouts, members, scores in kept:
        assert len({scores[i]["acc"] for i in members}) > 1
    off = {"dynamic_sampling": {"enable": False, "max_num_gen_batches": 5, "gen_prompts_per_step": 4}}
    kept, batches = rl.sample_groups(None, None, rows, cfg, off, random.Random(0))
    assert (len(kept), batches) == (3, 1)
