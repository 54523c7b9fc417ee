"""The discriminator's side of a PRISM alignment step on verl, as pure functions (CPU-testable).

verl's critic slot holds the discriminator (`prism.verl.models`); its worker scores packed sequences and
returns one value per token. These functions build the sequences it scores, read the scores back, and
turn our alignment loss (`prism.core.losses.alignment_discriminator_loss`) into a per-sequence loss that
survives verl's micro-batching and reordering.

Each scored sequence is what the CPU engine renders (`prism.discriminator.model.render`): the templated
prompt, then one segment (caption, or think+answer) as the assistant turn, closed by the template's
end-of-turn tokens. Teacher and rollout segments therefore end on the same scored token (method-reference B2).
A discriminator that does not see images scores the same sequences with the vision spans taken out, as
`render` does without images.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict
from verl.utils import tensordict_utils as tu
from verl.utils.seqlen_balancing import get_seqlen_balanced_partitions

from prism.core.advantages import prism_advantage
from prism.core.losses import alignment_discriminator_loss
from prism.core.modeling import chat_text
from prism.discriminator.model import without_vision_spans

COEFFICIENT_KEY = "prism_coef"
_MARKER = "PRISM-SEGMENT-END"


def assistant_turn_end_ids(template_owner, tokenizer) -> list[int]:
    """Token ids the chat template writes after an assistant turn's content (Qwen: `<|im_end|>\\n`)."""
    text = chat_text(template_owner, [{"role": "user", "content": "?"}], _MARKER)
    return tokenizer.encode(text.rsplit(_MARKER, 1)[1], add_special_tokens=False)


def per_sample(values: torch.Tensor) -> list[torch.Tensor]:
    """The rows of a jagged tensor whose ragged dim is the last one: (B, j) token fields, and (B, 4, j)
    M-RoPE position ids, cut from the packed values by the offsets. (Padding would go through the
    ragged dim's index, which a consolidated and pickled TensorDict gets wrong for (B, 4, j): rows mix.)"""
    offsets = values.offsets().tolist()
    packed = values.values()
    return [packed[..., start:end] for start, end in zip(offsets[:-1], offsets[1:], strict=True)]


def last_token_values(values: torch.Tensor) -> torch.Tensor:
    """(B,) the value at each sequence's last token, from verl's jagged per-token `values` (B, j).

    Not verl's `response_from_nested`, which shifts left by one token (the PPO critic convention)."""
    return values.values()[values.offsets()[1:] - 1]


def continue_positions(prompt_positions: torch.Tensor, count: int) -> torch.Tensor:
    """Prompt position ids, (L,) or (rows, L), continued by `count` text tokens.

    Every row counts on by one per token from its last prompt value. The prompt ends in text tokens
    (`<|im_start|>assistant\\n`), so this is what Qwen3-VL's get_rope_index gives for appended text."""
    step = torch.arange(1, count + 1, dtype=prompt_positions.dtype)
    return torch.cat([prompt_positions, prompt_positions[..., -1:] + step], dim=-1)


def discriminator_prompt(
    prompt_ids: torch.Tensor,
    prompt_positions: torch.Tensor,
    multi_modal_inputs: dict,
    vision_span: tuple[int, int] | None,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The prompt a discriminator sequence starts with: the policy's, or, for a discriminator that does not
    see images (`vision_span`: the ids of `<|vision_start|>`, `<|vision_end|>`), its tokens without
    vision spans, at text positions on every row (what get_rope_index gives for text) and no pixels."""
    if vision_span is None:
        return prompt_ids, prompt_positions, multi_modal_inputs
    ids = torch.tensor(without_vision_spans(prompt_ids.tolist(), *vision_span), dtype=prompt_ids.dtype)
    positions = torch.arange(len(ids), dtype=prompt_positions.dtype).expand(*prompt_positions.shape[:-1], -1)
    return ids, positions.clone(), {}


def segment_row(
    prompt_ids: torch.Tensor, prompt_positions: torch.Tensor, segment_ids: list[int], multi_modal_inputs: dict
) -> dict:
    """One discriminator sequence: prompt ++ segment (its end-of-turn tokens included), scored at its last
    token; the loss mask marks the segment (verl's engine sums it, our loss does not use it)."""
    segment = torch.tensor(segment_ids, dtype=prompt_ids.dtype)
    return {
        "input_ids": torch.cat([prompt_ids, segment]),
        "position_ids": continue_positions(prompt_positions, len(segment_ids)),
        "loss_mask": torch.cat([torch.zeros_like(prompt_ids), torch.ones_like(segment)]),
        "multi_modal_inputs": multi_modal_inputs,
    }


def discriminator_tensordict(rows: list[dict], coefficients: torch.Tensor, dp_size: int) -> TensorDict:
    """The worker batch, laid out as TransferQueue hands batches to verl's workers (every per-row tensor
    jagged, the loss coefficient a length-1 row), padded with zero-coefficient copies of the first row
    to a multiple of `dp_size`, since verl splits a batch evenly over data-parallel ranks."""
    padding = -len(rows) % dp_size
    rows = rows + [rows[0]] * padding
    coefficients = torch.cat([coefficients.float(), torch.zeros(padding)])

    def jagged(tensors):
        return torch.nested.as_nested_tensor(list(tensors), layout=torch.jagged)

    return tu.get_tensordict(
        {
            "input_ids": jagged(row["input_ids"] for row in rows),
            "position_ids": jagged(row["position_ids"] for row in rows),
            "loss_mask": jagged(row["loss_mask"] for row in rows),
            "multi_modal_inputs": [row["multi_modal_inputs"] for row in rows],
            COEFFICIENT_KEY: jagged(coefficients.unsqueeze(-1)),
        }
    )


def balanced_order(lengths: list[int], dp_size: int) -> list[int]:
    """An order of the rows whose `dp_size` contiguous equal chunks (how verl splits a batch over its
    data-parallel ranks) hold about equal token counts: the rows come as all captions, then all
    reasonings, so contiguous chunks would give some ranks only short rows and others only long ones."""
    partitions = get_seqlen_balanced_partitions(lengths, k_partitions=dp_size, equal_size=True)
    return [row for partition in partitions for row in sorted(partition)]


def surrogate_coefficients(
    teacher: torch.Tensor,
    student: torch.Tensor,
    teacher_of_pair: torch.Tensor,
    score_clip: float,
    score_reg_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Coefficients c such that sum(c * score) has, at these raw scores, the gradient of one segment's
    share of `alignment_discriminator_loss`: mean over the N (teacher, rollout) pairs of BT, plus
    reg * (mean t^2 + mean s^2) / 4 over the pairs, scores clipped (no gradient beyond the clip).

    teacher (G,) one per prompt; student (N,) one per pair; teacher_of_pair (N,) indexes teacher.
    Returns (teacher coefficients (G,), student coefficients (N,)).
    """
    pairs = student.numel()
    t_hat, s_hat = teacher.clamp(-score_clip, score_clip), student.clamp(-score_clip, score_clip)
    t_pair = t_hat[teacher_of_pair]
    # d/ds -log sigmoid(t - s) = sigmoid(s - t) = -d/dt
    pull = torch.sigmoid(s_hat - t_pair)
    student_coef = (pull + score_reg_coef * s_hat / 2) / pairs
    teacher_coef = torch.zeros_like(t_hat).index_add_(
        0, teacher_of_pair, (-pull + score_reg_coef * t_pair / 2) / pairs
    )
    return teacher_coef * _in_clip(teacher, score_clip), student_coef * _in_clip(student, score_clip)


def _in_clip(scores: torch.Tensor, score_clip: float) -> torch.Tensor:
    return ((scores >= -score_clip) & (scores <= score_clip)).to(scores.dtype)


def surrogate_loss(model_output: dict, data: TensorDict, dp_group=None) -> tuple[torch.Tensor, dict]:
    """verl loss function for the discriminator update: dp_size * sum(c * last-token score) per
    micro-batch. verl averages gradients over data-parallel ranks, so the step's gradient is that of
    sum(c * score) over the whole batch, whatever the micro-batching or the order of the rows."""
    scores = last_token_values(model_output["values"]).float()
    coefficients = data[COEFFICIENT_KEY].values().to(scores.device, torch.float32)
    return data["dp_size"] * (coefficients * scores).sum(), {}


def group_index(uids: list[str]) -> tuple[torch.Tensor, list[int]]:
    """(group of each rollout as 0..G-1 in order of first appearance, index of each group's first rollout)."""
    first: dict[str, int] = {}
    for i, uid in enumerate(uids):
        first.setdefault(uid, i)
    order = {uid: g for g, uid in enumerate(first)}
    return torch.tensor([order[uid] for uid in uids], dtype=torch.long), list(first.values())


def on_every_token(scalars: torch.Tensor, response_masks: list[torch.Tensor]) -> torch.Tensor:
    """Jagged (B, j): scalars[b] on each generated token of the b-th response (advantages, returns)."""
    rows = [value * mask.float() for value, mask in zip(scalars.float(), response_masks, strict=True)]
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged)


def on_last_token(scalars: torch.Tensor, response_masks: list[torch.Tensor]) -> torch.Tensor:
    """Jagged (B, j): scalars[b] on the b-th response's last token, zeros before (verl's rm_scores layout)."""
    rows = []
    for value, mask in zip(scalars.float(), response_masks, strict=True):
        row = torch.zeros(len(mask))
        row[-1] = value
        rows.append(row)
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged)


def discriminator_reward(
    caption: torch.Tensor, reasoning: torch.Tensor, valid: torch.Tensor, alpha: float, score_clip: float
) -> torch.Tensor:
    """alpha*caption + (1-alpha)*reasoning of the clipped scores, 0 off format (what verl logs as score)."""
    caption, reasoning = caption.clamp(-score_clip, score_clip), reasoning.clamp(-score_clip, score_clip)
    return (alpha * caption + (1 - alpha) * reasoning) * valid.float()


def rollout_advantage(
    caption: torch.Tensor,
    reasoning: torch.Tensor,
    valid: torch.Tensor,
    group: torch.Tensor,
    alpha: float,
    format_penalty: float,
    score_clip: float,
) -> torch.Tensor:
    """PRISM's advantage per rollout from raw discriminator scores, clipped as the CPU engine clips them."""
    return prism_advantage(
        caption.clamp(-score_clip, score_clip),
        reasoning.clamp(-score_clip, score_clip),
        valid,
        group,
        alpha,
        format_penalty,
    )


def discriminator_metrics(
    teacher_caption: torch.Tensor,
    teacher_reasoning: torch.Tensor,
    student_caption: torch.Tensor,
    student_reasoning: torch.Tensor,
    score_clip: float,
    score_reg_coef: float,
) -> dict[str, float]:
    """Our alignment loss and its parts on (teacher, rollout) pairs of raw scores, plus the clipped
    teacher-minus-rollout gaps: what the update optimises, measured before it."""
    out = alignment_discriminator_loss(
        teacher_caption, teacher_reasoning, student_caption, student_reasoning, score_clip, score_reg_coef
    )

    def gap(teacher, student):
        return (teacher.clamp(-score_clip, score_clip) - student.clamp(-score_clip, score_clip)).mean().item()

    caption_gap = gap(teacher_caption, student_caption)
    reasoning_gap = gap(teacher_reasoning, student_reasoning)
    return {
        "loss": out["loss"].item(),
        "bt_loss": (out["caption_loss"] + out["reasoning_loss"]).item(),
        "caption_bt_loss": out["caption_loss"].item(),
        "reasoning_bt_loss": out["reasoning_loss"].item(),
        "d_acc": (out["caption_acc"] + out["reasoning_acc"]).item() / 2,
        "caption_acc": out["caption_acc"].item(),
        "reasoning_acc": out["reasoning_acc"].item(),
        "gap": (caption_gap + reasoning_gap) / 2,
        "caption_gap": caption_gap,
        "reasoning_gap": reasoning_gap,
        "pairs": float(student_caption.numel()),
    }
