"""Discriminator losses: pairwise Bradley–Terry warmup (§2.3) and the alignment update (§3.5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """mean -log sigma(s_teacher - s_student): the teacher should out-score the student."""
    return -F.logsigmoid(teacher - student).mean()


def alignment_discriminator_loss(
    teacher_caption: torch.Tensor,
    teacher_reasoning: torch.Tensor,
    student_caption: torch.Tensor,
    student_reasoning: torch.Tensor,
    score_clip: float,
    score_reg_coef: float,
) -> dict[str, torch.Tensor]:
    """BT on both segments over (teacher, valid rollout) pairs + reg * mean squared score, scores clipped.

    Callers pass only valid, untruncated rollouts, each beside its prompt's teacher.
    """
    scores = [
        s.clamp(-score_clip, score_clip)
        for s in (teacher_caption, teacher_reasoning, student_caption, student_reasoning)
    ]
    t_cap, t_rea, s_cap, s_rea = scores
    caption_loss = bradley_terry(t_cap, s_cap)
    reasoning_loss = bradley_terry(t_rea, s_rea)
    score_reg = sum(s.pow(2).mean() for s in scores) / 4
    return {
        "loss": caption_loss + reasoning_loss + score_reg_coef * score_reg,
        "caption_loss": caption_loss.detach(),
        "reasoning_loss": reasoning_loss.detach(),
        "caption_acc": (t_cap > s_cap).float().mean().detach(),
        "reasoning_acc": (t_rea > s_rea).float().mean().detach(),
        "score_reg": score_reg.detach(),
    }
