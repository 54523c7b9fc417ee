"""CPU RLVR engine: verl's GRPO advantage and policy losses, with DAPO's dynamic sampling and overlong
penalty (method-reference §4.2), on rollouts from HF generate and the shared reward."""

from __future__ import annotations

import random

import torch

from prism.core.modeling import generate, load_model, load_processor, save_pretrained, token_logprobs
from prism.core.reward import compute_score
from prism.core.training import TrainingRun, lr_lambda, setup
from prism.core.verl_algos import actor_config, grpo_advantage, policy_loss
from prism.data.formats import RL_COLUMNS, read_parquet_rows


def overlong_penalty(lengths: torch.Tensor, max_length: int, buffer: int, factor: float) -> torch.Tensor:
    """DAPO's soft penalty: 0 up to max_length - buffer, then linear down to -factor at max_length."""
    expected = max_length - buffer
    return torch.clamp(-(lengths.float() - expected) / buffer * factor, max=0.0)


def sample_groups(policy, processor, rows, cfg, algo, rng):
    """Rollouts for prompts_per_step groups; with dynamic sampling, only groups whose accuracy varies."""
    n, wanted = cfg["rollouts_per_prompt"], cfg["prompts_per_step"]
    dynamic = algo["dynamic_sampling"]
    kept, generated_batches = [], 0
    while len(kept) < wanted:
        batch_prompts = dynamic["gen_prompts_per_step"] if dynamic["enable"] else wanted
        picked = rng.sample(rows, min(batch_prompts, len(rows)))
        group_rows = [r for r in picked for _ in range(n)]
        rollouts = generate(policy, processor, group_rows, cfg["max_response_length"], cfg["temperature"])
        scores = [
            compute_score(
                t,
                r["ground_truth"],
                cfg["accuracy_weight"],
                cfg["format_weight"],
                r.get("equivalent_answers", ()),
            )
            for t, r in zip(rollouts.texts, group_rows, strict=True)
        ]
        generated_batches += 1
        cap = dynamic["max_num_gen_batches"]
        last_try = cap is not None and generated_batches >= cap
        for g in range(len(picked)):
            members = list(range(g * n, (g + 1) * n))
            if not dynamic["enable"] or last_try or len({scores[i]["acc"] for i in members}) > 1:
                kept.append((rollouts, members, scores))
            if len(kept) == wanted:
                break
    return kept, generated_batches


def run(args) -> None:
    cfg = args.config
    algo = cfg["algorithm"]
    setup(args.threads, cfg["seed"])
    rows = read_parquet_rows(args.data / "train.parquet", RL_COLUMNS)
    processor, policy = load_processor(args.model), load_model(args.model)
    policy.model.visual.requires_grad_(not cfg["freeze_vision_tower"])
    optimizer = torch.optim.AdamW(
        [p for p in policy.parameters() if p.requires_grad], lr=cfg["lr"], weight_decay=algo["weight_decay"]
    )
    # as verl's FSDP engine: the ratio of the steps where no warmup step count is given
    warmup = algo["lr_warmup_steps"] or int(algo["lr_warmup_steps_ratio"] * cfg["steps"])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg["steps"], warmup))
    loss_config = actor_config(
        algo["loss_mode"],
        algo["loss_agg_mode"],
        algo["clip_ratio_low"],
        algo["clip_ratio_high"],
        algo["clip_ratio_c"],
        cfg["rollouts_per_prompt"],
        cfg["prompts_per_step"],
    )
    run = TrainingRun(
        args, "rl", cfg["steps"], {"policy": policy, "optimizer": optimizer, "schedule": schedule}
    )
    for step in run.steps():
        rng = random.Random(cfg["seed"] * 100_003 + step)
        groups, gen_batches = sample_groups(policy, processor, rows, cfg, algo, rng)
        policy.train()
        total_loss, accs, fmts, rewards, lengths = 0.0, [], [], [], []
        # One policy update per step over all kept groups (ppo_mini_batch = train batch): the loss is the
        # mean of the groups' losses, from one forward and backward per generated batch.
        for rollouts, batch in _by_generated_batch(groups):
            kept = [i for members, _ in batch for i in members]
            inputs = {k: (v[kept] if k != "pixel_values" else v) for k, v in rollouts.inputs.items()}
            inputs["pixel_values"], inputs["image_grid_thw"] = _images_of(rollouts.inputs, kept)
            batch_log_prob = token_logprobs(policy, inputs, rollouts.prompt_length)
            batch_loss, start = 0.0, 0
            for members, scores in batch:
                mask = rollouts.response_mask[members].float()
                reward = torch.tensor([scores[i]["score"] for i in members])
                if algo["overlong_buffer"]["enable"]:
                    ob = algo["overlong_buffer"]
                    reward = reward + overlong_penalty(
                        mask.sum(-1), cfg["max_response_length"], ob["length"], ob["penalty_factor"]
                    )
                advantages = grpo_advantage(reward, mask, [0] * len(members))
                log_prob = batch_log_prob[start : start + len(members)]
                start += len(members)
                loss, _ = policy_loss(loss_config, log_prob.detach(), log_prob, advantages, mask)
                batch_loss = batch_loss + loss / len(groups)
                total_loss += loss.item() / len(groups)
                accs += [scores[i]["acc"] for i in members]
                fmts += [scores[i]["format"] for i in members]
                rewards += reward.tolist()
                lengths += mask.sum(-1).tolist()
            batch_loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg["grad_clip"])
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        run.record(
            step + 1,
            reward=sum(rewards) / len(rewards),
            acc=sum(accs) / len(accs),
            format=sum(fmts) / len(fmts),
            pg_loss=total_loss,
            response_length=sum(lengths) / len(lengths),
            gen_batches=gen_batches,
            lr=schedule.get_last_lr()[0],
        )
    save_pretrained(policy, processor, args.model, args.out)
    reward = run.metric("reward")
    run.finish({"first_reward": reward[0], "final_reward": reward[-1]})


def _by_generated_batch(groups: list) -> list[tuple]:
    """The kept groups as (rollouts, [(members, scores), ...]) per generated batch, in order: the groups
    of one batch share its padding, so their responses go through the policy together."""
    batches: dict[int, tuple] = {}
    for rollouts, members, scores in groups:
        batches.setdefault(id(rollouts), (rollouts, []))[1].append((members, scores))
    return list(batches.values())


def _images_of(inputs: dict, members: list[int]):
    """pixel_values rows and grid entries of the chosen samples (pixel rows are concatenated per image)."""
    grid = inputs["image_grid_thw"]
    sizes = grid.prod(-1).tolist()
    offsets = [0, *torch.tensor(sizes).cumsum(0).tolist()]
    pixels = torch.cat([inputs["pixel_values"][offsets[i] : offsets[i + 1]] for i in members])
    return pixels, grid[members]
