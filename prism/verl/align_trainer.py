"""PRISM alignment (Stage 2) as a verl 0.9.1 trainer: the sync PPO trainer with the critic slot holding
the discriminator (integration-reference §3.2). Imported only in the verl environment (it needs
TransferQueue); `prism.verl.align` starts it.

The stock step is kept, and three of its hooks do PRISM's work, in PRISM's order (method-reference §3.3–3.6):
sample -> balance -> old log-probs (-> ref) -> `_compute_values`: the pre-update discriminator scores
each rollout's caption and reasoning segments and each prompt's teacher segments -> `_compute_advantage`:
A = alpha*GN(caption) + (1-alpha)*GN(reasoning) - penalty*[off format] -> `_update_critic`: one
discriminator step on (teacher, valid untruncated rollout) pairs -> actor update.

Scoring follows the CPU engine (`prism.align.cpu`): a response is decoded and split by `parse_response`;
each segment is scored on its own, after the prompt, as the assistant turn (`align_batch.segment_row`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import ray
import torch
import transfer_queue as tq
from tensordict import TensorDict
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils import tensordict_utils as tu
from verl.utils.metric import reduce_metrics

from prism.core.segments import parse_response
from prism.discriminator.model import VISION_SPAN, sees_images
from prism.verl.align_batch import (
    assistant_turn_end_ids,
    balanced_order,
    discriminator_metrics,
    discriminator_prompt,
    discriminator_reward,
    discriminator_tensordict,
    group_index,
    last_token_values,
    on_every_token,
    on_last_token,
    per_sample,
    rollout_advantage,
    segment_row,
    surrogate_coefficients,
    surrogate_loss,
)

# the discriminator's sequences travel to the critic workers through their own TransferQueue partition
PARTITION = "prism_discriminator"


@dataclass
class ScoredRollouts:
    """One step's rollouts (padding samples left out) with their pre-update discriminator scores."""

    rollout_index: list[int]  # position of each rollout in the step's batch
    response_masks: list[torch.Tensor]  # of every sample in the batch, padding included
    group: torch.Tensor  # (N,) prompt of each rollout, 0..G-1
    valid: torch.Tensor  # (N,) on the caption/think/answer format
    truncated: torch.Tensor  # (N,) stopped by the length budget
    caption: torch.Tensor  # (N,) raw scores; 0 off format
    reasoning: torch.Tensor
    teacher_caption: torch.Tensor  # (G,) raw scores of each prompt's teacher
    teacher_reasoning: torch.Tensor
    caption_rows: dict[int, dict]  # rollout -> its scored sequence, for the update
    reasoning_rows: dict[int, dict]
    teacher_caption_rows: list[dict]
    teacher_reasoning_rows: list[dict]


class PrismAlignTrainer(PPOTrainerSync):
    """verl's sync PPO trainer whose critic is PRISM's discriminator; settings from `config.prism`."""

    def __init__(self, config):
        super().__init__(config)
        if not self.use_critic:
            raise ValueError("PRISM alignment needs critic.enable=true: the discriminator is the critic")
        self.prism = config.prism
        self.scored: ScoredRollouts | None = None

    def _setup(self):
        super()._setup()
        self.critic_wg.set_loss_fn(surrogate_loss)
        template_owner = self.processor if self.processor is not None else self.tokenizer
        self.turn_end_ids = assistant_turn_end_ids(template_owner, self.tokenizer)
        self.vision_span = None  # a discriminator that sees images scores the policy's prompt as it is
        if not sees_images(self.config.critic.model.path):
            self.vision_span = tuple(self.tokenizer.convert_tokens_to_ids(list(VISION_SPAN)))

    # ---- step 6 of the stock step: discriminator scores instead of critic values ----

    def _compute_values(self, batch, metrics: dict):
        fields = [
            "uid",
            "prompts",
            "responses",
            "response_mask",
            "position_ids",
            "multi_modal_inputs",
            "rm_scores",
            self.prism.teacher_caption_field,
            self.prism.teacher_reasoning_field,
        ]
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        real = [i for i, tag in enumerate(batch.tags) if not tag.get("is_padding", False)]
        scored = self.scored = self._score(data, real)

        reward = torch.zeros(len(batch))
        reward[real] = discriminator_reward(
            scored.caption, scored.reasoning, scored.valid, self.prism.alpha, self.prism.score_clip
        )
        # the discriminator's reward replaces the rule reward in verl's score metrics; values are unused
        tq.kv_batch_put(
            keys=batch.keys,
            partition_id=batch.partition_id,
            fields=TensorDict(
                {
                    "rm_scores": on_last_token(reward, scored.response_masks),
                    "values": on_every_token(torch.zeros(len(batch)), scored.response_masks),
                },
                batch_size=len(batch),
            ),
        )
        rule_score = torch.stack([row.sum() for row in per_sample(data["rm_scores"])])[real]
        valid, clip = scored.valid, self.prism.score_clip
        metrics.update(
            {
                "prism/format_valid_rate": valid.float().mean().item(),
                "prism/truncated_rate": scored.truncated.float().mean().item(),
                "prism/rule_score/mean": rule_score.mean().item(),
            }
        )
        if valid.any():  # clipped, as the CPU engine logs them
            for name, scores in (("caption", scored.caption), ("reasoning", scored.reasoning)):
                metrics[f"prism/{name}_score/mean"] = scores[valid].clamp(-clip, clip).mean().item()
        return batch

    def _score(self, data: TensorDict, real: list[int]) -> ScoredRollouts:
        prompts, positions = per_sample(data["prompts"]), per_sample(data["position_ids"])
        responses = per_sample(data["responses"])
        multi_modal = list(data["multi_modal_inputs"])
        teacher_captions = list(data[self.prism.teacher_caption_field])
        teacher_reasonings = list(data[self.prism.teacher_reasoning_field])
        uids = list(data["uid"])
        group, first = group_index([uids[i] for i in real])
        texts = self.tokenizer.batch_decode([responses[i].tolist() for i in real], skip_special_tokens=True)
        segments = [parse_response(text) for text in texts]

        def row(i: int, text: str) -> dict:
            prompt, prompt_positions, pixels = discriminator_prompt(
                prompts[i], positions[i][..., : len(prompts[i])], multi_modal[i], self.vision_span
            )
            ids = self.tokenizer.encode(text, add_special_tokens=False) + self.turn_end_ids
            return segment_row(prompt, prompt_positions, ids, pixels)

        valid_at = [k for k, segment in enumerate(segments) if segment.valid]
        caption_rows = {k: row(real[k], segments[k].caption) for k in valid_at}
        reasoning_rows = {k: row(real[k], segments[k].reasoning) for k in valid_at}
        teacher_caption_rows = [row(real[k], teacher_captions[real[k]]) for k in first]
        teacher_reasoning_rows = [row(real[k], teacher_reasonings[real[k]]) for k in first]
        scores = self._discriminator_scores(
            [*caption_rows.values(), *reasoning_rows.values(), *teacher_caption_rows, *teacher_reasoning_rows]
        )
        n_valid, n_groups = len(valid_at), len(first)
        caption, reasoning = torch.zeros(len(real)), torch.zeros(len(real))
        caption[valid_at] = scores[:n_valid]
        reasoning[valid_at] = scores[n_valid : 2 * n_valid]
        teacher = scores[2 * n_valid :]
        max_length = self.config.data.max_response_length
        return ScoredRollouts(
            rollout_index=real,
            response_masks=per_sample(data["response_mask"]),
            group=group,
            valid=torch.tensor([segment.valid for segment in segments]),
            truncated=torch.tensor([len(responses[i]) >= max_length for i in real]),
            caption=caption,
            reasoning=reasoning,
            teacher_caption=teacher[:n_groups],
            teacher_reasoning=teacher[n_groups:],
            caption_rows=caption_rows,
            reasoning_rows=reasoning_rows,
            teacher_caption_rows=teacher_caption_rows,
            teacher_reasoning_rows=teacher_reasoning_rows,
        )

    # ---- step 7: PRISM's advantage instead of the configured estimator ----

    def _compute_advantage(self, batch, metrics: dict):
        scored, prism = self.scored, self.prism
        advantage = torch.zeros(len(batch))
        advantage[scored.rollout_index] = rollout_advantage(
            scored.caption,
            scored.reasoning,
            scored.valid,
            scored.group,
            prism.alpha,
            prism.format_penalty,
            prism.score_clip,
        )
        per_token = on_every_token(advantage, scored.response_masks)
        return tq.kv_batch_put(
            keys=batch.keys,
            partition_id=batch.partition_id,
            fields=TensorDict({"advantages": per_token, "returns": per_token}, batch_size=len(batch)),
        )

    # ---- step 8: the discriminator update instead of the value-function update ----

    def _update_critic(self, batch, metrics: dict):
        """One optimizer step of our alignment loss on (teacher, rollout) pairs of the same prompt, with the
        rollouts on format and not cut by the length budget, as in the CPU engine."""
        scored, prism = self.scored, self.prism
        self.scored = None
        pairs = (scored.valid & ~scored.truncated).nonzero().flatten()
        metrics["prism/disc/pairs"] = float(pairs.numel())
        if pairs.numel() == 0:
            return batch
        used_groups, teacher_of_pair = torch.unique(scored.group[pairs], return_inverse=True)
        teacher_caption = scored.teacher_caption[used_groups]
        teacher_reasoning = scored.teacher_reasoning[used_groups]
        student_caption, student_reasoning = scored.caption[pairs], scored.reasoning[pairs]
        measured = discriminator_metrics(
            teacher_caption[teacher_of_pair],
            teacher_reasoning[teacher_of_pair],
            student_caption,
            student_reasoning,
            prism.score_clip,
            prism.score_reg_coef,
        )
        metrics.update({f"prism/disc/{name}": value for name, value in measured.items()})

        coefficients = [
            surrogate_coefficients(teacher, student, teacher_of_pair, prism.score_clip, prism.score_reg_coef)
            for teacher, student in (
                (teacher_caption, student_caption),
                (teacher_reasoning, student_reasoning),
            )
        ]
        (t_cap, s_cap), (t_rea, s_rea) = coefficients
        groups, rollouts = used_groups.tolist(), pairs.tolist()
        rows = [
            *(scored.caption_rows[k] for k in rollouts),
            *(scored.reasoning_rows[k] for k in rollouts),
            *(scored.teacher_caption_rows[g] for g in groups),
            *(scored.teacher_reasoning_rows[g] for g in groups),
        ]
        update = self._discriminator_step(rows, torch.cat([s_cap, s_rea, t_cap, t_rea]))["metrics"]
        metrics.update(reduce_metrics({f"prism/disc/{key}": update[key] for key in ("grad_norm", "lr")}))
        return batch

    # ---- the critic workers, fed through TransferQueue like verl's own batches ----

    def _critic_dp_size(self) -> int:
        # how verl's own _balance_batch asks a worker group for its data-parallel size
        workers = self.critic_wg
        if "train" not in workers._dispatch_info:
            workers._dispatch_info["train"] = workers._query_dispatch_info("train")
        return max(workers._dispatch_info["train"]) + 1

    def _put_rows(self, rows: list[dict], coefficients: torch.Tensor):
        """The rows (each with its coefficient) in a length-balanced order; returns the batch's metadata
        and the order (position in the batch -> row, padding rows last)."""
        dp_size = self._critic_dp_size()
        fields = discriminator_tensordict(rows, coefficients, dp_size)
        order = balanced_order(fields["input_ids"].offsets().diff().tolist(), dp_size)
        fields = tu.index_select_tensor_dict(fields, torch.tensor(order))
        prefix = uuid.uuid4().hex
        keys = [f"{prefix}_{i}" for i in range(len(fields))]
        meta = tq.kv_batch_put(keys=keys, partition_id=PARTITION, fields=fields, tags=[{} for _ in keys])
        return meta, torch.tensor(order)

    def _discriminator_scores(self, rows: list[dict]) -> torch.Tensor:
        """(len(rows),) raw last-token scores of the current discriminator, in eval mode."""
        meta, order = self._put_rows(rows, torch.zeros(len(rows)))
        meta.extra_info.update(compute_loss=False, temperature=1.0)
        try:
            # the workers write `values` (one per token of each sequence) back into TransferQueue
            ray.get(self.critic_wg.infer_batch(meta).futures)
            values = tq.kv_batch_get(keys=meta.keys, partition_id=PARTITION, select_fields=["values"])
            scores = torch.empty(len(order))
            scores[order] = last_token_values(values["values"]).float().cpu()
            return scores[: len(rows)]
        finally:
            tq.kv_clear(keys=meta.keys, partition_id=PARTITION)

    def _discriminator_step(self, rows: list[dict], coefficients: torch.Tensor) -> TensorDict:
        """One optimizer step on sum(coefficients * score): all rows form one mini-batch, one epoch."""
        meta, _ = self._put_rows(rows, coefficients)  # the coefficients travel with their rows
        meta.extra_info.update(mini_batch_size=len(meta), epochs=1, temperature=1.0)
        try:
            return self.critic_wg.train_mini_batch(meta).get()
        finally:
            tq.kv_clear(keys=meta.keys, partition_id=PARTITION)
