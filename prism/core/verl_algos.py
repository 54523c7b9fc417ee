"""verl's own advantage and policy-loss functions (verl.trainer.ppo.core_algos), called on CPU tensors.

The CPU engines use these so the tiny run exercises the math the cluster's verl trainer runs.
"""

from __future__ import annotations

import numpy as np
import torch


def actor_config(
    loss_mode: str,
    loss_agg_mode: str,
    clip_ratio_low: float,
    clip_ratio_high: float,
    clip_ratio_c: float,
    rollout_n: int,
    prompts: int,
):
    from verl.workers.config import ActorConfig, PolicyLossConfig

    return ActorConfig(
        strategy="fsdp",
        rollout_n=rollout_n,
        ppo_mini_batch_size=prompts,
        ppo_micro_batch_size_per_gpu=prompts * rollout_n,
        clip_ratio_low=clip_ratio_low,
        clip_ratio_high=clip_ratio_high,
        clip_ratio_c=clip_ratio_c,
        loss_agg_mode=loss_agg_mode,
        policy_loss=PolicyLossConfig(loss_mode=loss_mode),
    )


def policy_loss(config, old_log_prob, log_prob, advantages, response_mask):
    """(loss, metrics) from verl's registered loss for config.policy_loss.loss_mode."""
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    loss_fn = get_policy_loss_fn(config.policy_loss.loss_mode)
    return loss_fn(
        old_log_prob=old_log_prob,
        log_prob=log_prob,
        advantages=advantages,
        response_mask=response_mask,
        loss_agg_mode=config.loss_agg_mode,
        config=config,
    )


def grpo_advantage(scores: torch.Tensor, response_mask: torch.Tensor, group: list) -> torch.Tensor:
    """verl's GRPO outcome advantage from one scalar score per response, (B, R)."""
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    token_rewards = torch.zeros_like(response_mask, dtype=torch.float32)
    last = (response_mask.sum(-1).long() - 1).clamp(min=0)
    token_rewards[torch.arange(len(scores)), last] = scores.float()
    advantages, _ = compute_grpo_outcome_advantage(
        token_rewards, response_mask.float(), np.array(group, dtype=object)
    )
    return advantages
