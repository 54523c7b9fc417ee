"""The upcycle and warmup stages (CPU engine): load, build or train, save, prove, write the manifest."""

from __future__ import annotations

import math
import random
import shutil
import time
from pathlib import Path

import torch

from prism.core.losses import bradley_terry
from prism.core.manifest import MANIFEST, write_manifest
from prism.core.modeling import load_model, load_processor
from prism.core.training import Checkpoint, MetricLog, lr_lambda, setup
from prism.data.formats import read_warmup_pairs
from prism.discriminator.model import Discriminator, render
from prism.discriminator.upcycle import save_upstream_layout, upcycle


def _copy_processor(processor, source, out) -> None:
    processor.save_pretrained(out)
    for extra in [*source.glob("*.py"), source / "processor_config.json"]:
        if extra.exists():
            shutil.copy(extra, out / extra.name)


@torch.no_grad()
def _reload_difference(moe, out_dir, processor) -> float:
    """Max |logit| difference between the in-memory MoE and its saved checkpoint on one image prompt."""
    from prism.data import synthetic

    example = synthetic.examples(1, seed=0)[0]
    inputs = render(processor, [example.question], [example.scene.image()], [example.teacher_response()])
    reloaded = load_model(str(out_dir)).eval()
    return (moe.eval()(**inputs).logits - reloaded(**inputs).logits).abs().max().item()


def upcycle_stage(args) -> None:
    cfg, started = args.config, time.time()
    setup(args.threads, cfg["upcycle"]["seed"])
    dense, processor = load_model(args.model), load_processor(args.model)
    spec = {
        k: cfg["upcycle"][k]
        for k in ("num_experts", "top_k", "noise_std", "router_std", "router_aux_loss_coef", "seed")
    }
    moe = upcycle(dense, **spec)
    save_upstream_layout(moe, args.out)
    _copy_processor(processor, Path(args.model), args.out)
    metrics = {
        "dense_parameters": sum(p.numel() for p in dense.parameters()),
        "moe_parameters": sum(p.numel() for p in moe.parameters()),
        "reload_max_logit_diff": _reload_difference(moe, args.out, processor),
    }
    if metrics["reload_max_logit_diff"] > 1e-4:
        raise RuntimeError(f"saved MoE does not reload to the same logits: {metrics}")
    write_manifest(args.out / MANIFEST, "upcycle", [f"{args.model}/{MANIFEST}"], cfg, metrics, started)


def warmup_stage(args) -> None:
    cfg, started = args.config, time.time()
    warm = cfg["warmup"]
    setup(args.threads, warm["seed"])
    pairs = read_warmup_pairs(f"{args.data}/warmup_pairwise.jsonl")
    processor = load_processor(args.model)
    processor.image_processor.max_pixels = warm["max_pixels"]
    disc = Discriminator(load_model(args.model), cfg["value_head_dropout"])
    aux_coef = disc.backbone.config.text_config.router_aux_loss_coef
    per_epoch = math.ceil(len(pairs) / warm["batch_size"])
    total = max(1, per_epoch * warm["epochs"] // warm["grad_accum"])
    optimizer = torch.optim.AdamW(disc.parameters(), lr=warm["lr"], weight_decay=warm["weight_decay"])
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(total, round(warm["warmup_ratio"] * total), warm["scheduler"])
    )
    state = {"model": disc, "optimizer": optimizer, "schedule": schedule}
    checkpoint = Checkpoint(args.work, every=max(1, total // 4))
    start = checkpoint.load(state)
    log = MetricLog(args.work / "metrics.csv", total)
    log.reset_after(start)
    disc.train()
    for step in range(start, total):
        for micro in range(warm["grad_accum"]):
            epoch, position = divmod(step * warm["grad_accum"] + micro, per_epoch)
            order = list(range(len(pairs)))
            random.Random(warm["seed"] + epoch).shuffle(order)
            batch = [
                pairs[i] for i in order[position * warm["batch_size"] : (position + 1) * warm["batch_size"]]
            ]
            # Each line gives a caption pair and a reasoning pair; teacher and student go in one forward.
            questions = [p["prompt"] for p in batch] * 4
            images = [p["image"] for p in batch] * 4
            segments = (
                [p["teacher_caption"] for p in batch]
                + [p["teacher_cot"] for p in batch]
                + [p["student_caption"] for p in batch]
                + [p["student_cot"] for p in batch]
            )
            inputs = render(processor, questions, images, segments)
            if inputs["input_ids"].shape[1] > warm["max_length"]:
                raise ValueError(
                    f"a warmup pair renders to {inputs['input_ids'].shape[1]} tokens, over "
                    f"max_length={warm['max_length']}; raise it rather than truncate the segment"
                )
            scores, balance = disc(inputs, router_aux=True)
            teacher, student = scores.chunk(2)
            pair_loss = bradley_terry(teacher, student)
            loss = (pair_loss + aux_coef * balance) / warm["grad_accum"]
            loss.backward()
        torch.nn.utils.clip_grad_norm_(disc.parameters(), warm["grad_clip"])
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        log.log(
            step + 1,
            loss=pair_loss.item(),
            balance=balance.item(),
            acc=(teacher > student).float().mean().item(),
            gap=(teacher - student).mean().item(),
        )
        checkpoint.save(step + 1, state)
    disc.save(args.out)
    _copy_processor(processor, Path(args.model), args.out)
    shutil.copy(args.work / "metrics.csv", args.out / "metrics.csv")
    rows = log.rows()
    metrics = {
        "steps": total,
        "pairs": len(pairs),
        "first_loss": float(rows[0]["loss"]),
        "final_loss": float(rows[-1]["loss"]),
        "final_acc": float(rows[-1]["acc"]),
    }
    write_manifest(
        args.out / MANIFEST,
        "warmup_discriminator",
        [f"{args.model}/{MANIFEST}", f"{args.data}/{MANIFEST}"],
        cfg,
        metrics,
        started,
    )
