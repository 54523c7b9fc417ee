"""PRISM's alignment advantage (method-reference §3.4), as small pure functions over prompt groups."""

from __future__ import annotations

import torch

EPS = 1e-6


def group_normalize(values: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """GN(x): (x - mean_g) / (std_g + eps) per prompt group, unbiased std; a singleton group has mean 0
    and std 1, so it gives x / (1 + eps), as the reference does."""
    out = torch.zeros_like(values, dtype=torch.float32)
    for g in group.unique():
        members = group == g
        x = values[members].float()
        std = x.std() if x.numel() > 1 else torch.tensor(1.0)
        mean = x.mean() if x.numel() > 1 else torch.tensor(0.0)
        out[members] = (x - mean) / (std + EPS)
    return out


def floor_invalid(scores: torch.Tensor, valid: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Put each invalid response one below the lowest valid score of its group (0 - 1 if none is valid)."""
    out = scores.clone().float()
    for g in group.unique():
        members = group == g
        valid_scores = scores[members & valid]
        floor = (valid_scores.min() if valid_scores.numel() else torch.tensor(0.0)) - 1.0
        out[members & ~valid] = floor
    return out


def prism_advantage(
    caption_scores: torch.Tensor,
    reasoning_scores: torch.Tensor,
    valid: torch.Tensor,
    group: torch.Tensor,
    alpha: float,
    format_penalty: float,
) -> torch.Tensor:
    """A = alpha*GN(caption) + (1-alpha)*GN(reasoning) - penalty*[invalid], one scalar per response."""
    caption = group_normalize(floor_invalid(caption_scores, valid, group), group)
    reasoning = group_normalize(floor_invalid(reasoning_scores, valid, group), group)
    return alpha * caption + (1 - alpha) * reasoning - format_penalty * (~valid).float()
