"""CPU alignment engine: the per-step order of the reference trainer (method-reference §3.3–3.6).

rollouts -> discriminator scores of caption and reasoning (pre-update discriminator) -> alpha-mixed
group-normalised advantage -> discriminator update on teacher vs. valid rollouts -> PPO-clip actor update.

Each step also logs what the discriminator cannot be asked: how much of the scene the rollouts' captions
get right (perception, against the truth the synthetic generator wrote beside each prompt) and how often
their answers are right (reasoning), so a curve shows in which direction the policy moves.
"""

from __future__ import annotations

import random

import torch

from prism.core.advantages import prism_advantage
from prism.core.losses import alignment_discriminator_loss
from prism.core.modeling import generate, load_model, load_processor, save_pretrained, token_logprobs
from prism.core.reward import compute_score
from prism.core.segments import parse_response
from prism.core.training import TrainingRun, setup
from prism.core.verl_algos import actor_config, policy_loss
from prism.data.formats import ALIGN_COLUMNS, read_parquet_rows
from prism.data.synthetic import caption_score
from prism.discriminator.model import Discriminator, render


def _question(row: dict) -> str:
    return row["extra_info"]["question"]


def truth_metrics(rows: list[dict], texts: list[str], segments: list) -> dict:
    """Mean perception and answer accuracy of the rollouts against the scene the prompt was drawn from;
    none for rows without one (a set that was not generated)."""
    scenes = [r["extra_info"].get("scene") for r in rows]
    if any(scene is None for scene in scenes):
        return {}
    perception = [
        caption_score(s.caption, scene) if s.valid else 0.0 for s, scene in zip(segments, scenes, strict=True)
    ]
    accuracy = [compute_score(t, r["ground_truth"])["acc"] for t, r in zip(texts, rows, strict=True)]
    return {"perception": sum(perception) / len(perception), "answer_acc": sum(accuracy) / len(accuracy)}


def score_segments(disc, processor, rows, captions, reasonings, clip: float):
    """Discriminator scores (caption, reasoning) for each row's segments, clipped to +-clip."""
    questions = [_question(r) for r in rows]
    images = [r["image"] for r in rows] if disc.sees_images else None
    caption = disc(render(processor, questions, images, captions))
    reasoning = disc(render(processor, questions, images, reasonings))
    return caption.clamp(-clip, clip), reasoning.clamp(-clip, clip)


def run(args) -> None:
    cfg = args.config
    setup(args.threads, cfg["seed"])
    rows = read_parquet_rows(args.data / "train.parquet", ALIGN_COLUMNS)
    processor, policy = load_processor(args.model), load_model(args.model)
    policy.model.visual.requires_grad_(not cfg["freeze_vision_tower"])
    disc, disc_processor = Discriminator.load(args.disc), load_processor(args.disc)
    actor_opt = torch.optim.AdamW(
        [p for p in policy.parameters() if p.requires_grad],
        lr=cfg["actor_lr"],
        weight_decay=cfg["weight_decay"],
    )
    disc_opt = torch.optim.AdamW(disc.parameters(), lr=cfg["disc_lr"], weight_decay=cfg["weight_decay"])
    n, prompts = cfg["rollouts_per_prompt"], cfg["prompts_per_step"]
    loss_config = actor_config("vanilla", "token-mean", cfg["clip_ratio"], cfg["clip_ratio"], 3.0, n, prompts)
    state = {"policy": policy, "disc": disc, "actor_opt": actor_opt, "disc_opt": disc_opt}
    run = TrainingRun(args, "align", cfg["steps"], state)
    for step in run.steps():
        picked = random.Random(cfg["seed"] * 100_003 + step).sample(rows, prompts)
        group_rows = [r for r in picked for _ in range(n)]
        rollouts = generate(policy, processor, group_rows, cfg["max_response_length"], cfg["temperature"])
        segments = [parse_response(text) for text in rollouts.texts]
        valid = torch.tensor([s.valid for s in segments])
        group = torch.arange(prompts).repeat_interleave(n)

        # 1. Reward: score rollouts with the pre-update discriminator (eval mode: dropout off).
        caption_scores, reasoning_scores = torch.zeros(len(group_rows)), torch.zeros(len(group_rows))
        disc.eval()
        idx = valid.nonzero().squeeze(-1).tolist()
        if idx:
            with torch.no_grad():
                cap, rea = score_segments(
                    disc,
                    disc_processor,
                    [group_rows[i] for i in idx],
                    [segments[i].caption for i in idx],
                    [segments[i].reasoning for i in idx],
                    cfg["score_clip"],
                )
            caption_scores[idx], reasoning_scores[idx] = cap, rea
        advantage = prism_advantage(
            caption_scores, reasoning_scores, valid, group, cfg["alpha"], cfg["format_penalty"]
        )

        # 2. Discriminator: teacher vs. valid, untruncated rollouts of the same prompt.
        disc.train()
        trainable = [i for i in idx if not rollouts.truncated[i]]
        disc_metrics = {}
        if trainable:
            chosen = [group_rows[i] for i in trainable]
            t_cap, t_rea = score_segments(
                disc,
                disc_processor,
                chosen,
                [r["teacher_caption"] for r in chosen],
                [r["teacher_cot"] for r in chosen],
                cfg["score_clip"],
            )
            s_cap, s_rea = score_segments(
                disc,
                disc_processor,
                chosen,
                [segments[i].caption for i in trainable],
                [segments[i].reasoning for i in trainable],
                cfg["score_clip"],
            )
            out = alignment_discriminator_loss(
                t_cap, t_rea, s_cap, s_rea, cfg["score_clip"], cfg["score_reg_coef"]
            )
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(disc.parameters(), cfg["grad_clip"])
            disc_opt.step()
            disc_opt.zero_grad()
            disc_metrics = {
                "disc_loss": out["loss"].item(),
                "disc_caption_acc": out["caption_acc"].item(),
                "disc_reasoning_acc": out["reasoning_acc"].item(),
                "caption_gap": (t_cap - s_cap).mean().item(),
                "reasoning_gap": (t_rea - s_rea).mean().item(),
            }

        # 3. Actor: one on-policy PPO-clip update with the alignment advantage on every response token.
        policy.train()
        log_prob = token_logprobs(policy, rollouts.inputs, rollouts.prompt_length)
        mask = rollouts.response_mask.float()
        pg_loss, _ = policy_loss(loss_config, log_prob.detach(), log_prob, advantage[:, None] * mask, mask)
        pg_loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg["grad_clip"])
        actor_opt.step()
        actor_opt.zero_grad()
        run.record(
            step + 1,
            pg_loss=pg_loss.item(),
            valid_ratio=valid.float().mean().item(),
            caption_score=caption_scores[valid].mean().item() if idx else 0.0,
            reasoning_score=reasoning_scores[valid].mean().item() if idx else 0.0,
            response_length=rollouts.lengths.float().mean().item(),
            **truth_metrics(group_rows, rollouts.texts, segments),
            **disc_metrics,
        )
    save_pretrained(policy, processor, args.model, args.out)
    valid = run.metric("valid_ratio")
    run.finish({"first_valid_ratio": valid[0], "final_valid_ratio": valid[-1]})
