"""The upcycle and warmup stages: load, build or train, save, prove, write the manifest."""

from __future__ import annotations

import math
import time

import torch

from prism.core.losses import bradley_terry
from prism.core.manifest import MANIFEST, write_manifest
from prism.core.modeling import load_model, load_processor, save_processor
from prism.core.training import TrainingRun, epoch_batch, optimizer_and_schedule, setup
from prism.data import synthetic
from prism.data.formats import read_warmup_pairs
from prism.discriminator.model import Discriminator, render
from prism.discriminator.upcycle import save_upstream_layout, upcycle


@torch.no_grad()
def _reload_difference(moe, out_dir, processor) -> float:
    """Max |logit| difference between the in-memory MoE and its saved checkpoint on one image prompt."""
    example = synthetic.examples(1, seed=0)[0]
    inputs = render(processor, [example.question], [example.scene.image()], [example.teacher_response()])
    reloaded = load_model(str(out_dir)).eval()
    return (moe.eval()(**inputs).logits - reloaded(**inputs).logits).abs().max().item()


def upcycle_stage(args) -> None:
    spec, started = dict(args.config["upcycle"]), time.time()
    setup(args.threads, spec["seed"])
    dense, processor = load_model(args.model), load_processor(args.model)
    moe = upcycle(dense, **spec)
    save_upstream_layout(moe, args.out)
    save_processor(processor, args.model, args.out)
    metrics = {
        "dense_parameters": sum(p.numel() for p in dense.parameters()),
        "moe_parameters": sum(p.numel() for p in moe.parameters()),
        "reload_max_logit_diff": _reload_difference(moe, args.out, processor),
    }
    if metrics["reload_max_logit_diff"] > 1e-4:
        raise RuntimeError(f"saved MoE does not reload to the same logits: {metrics}")
    write_manifest(args.out / MANIFEST, "upcycle", [args.model / MANIFEST], args.config, metrics, started)


def warmup_stage(args) -> None:
    cfg = args.config["warmup"]
    setup(args.threads, cfg["seed"])
    pairs = read_warmup_pairs(args.data / "warmup_pairwise.jsonl")
    processor = load_processor(args.model)
    processor.image_processor.max_pixels = cfg["max_pixels"]
    disc = Discriminator(load_model(args.model), args.config["value_head_dropout"])
    aux_coef = disc.backbone.config.text_config.router_aux_loss_coef
    total = max(1, math.ceil(len(pairs) / cfg["batch_size"]) * cfg["epochs"] // cfg["grad_accum"])
    optimizer, schedule = optimizer_and_schedule(disc.parameters(), cfg, total)
    run = TrainingRun(
        args, "warmup_discriminator", total, {"model": disc, "optimizer": optimizer, "schedule": schedule}
    )
    disc.train()
    for step in run.steps():
        for micro in range(cfg["grad_accum"]):
            batch = epoch_batch(pairs, cfg["seed"], step * cfg["grad_accum"] + micro, cfg["batch_size"])
            # Each line gives a caption pair and a reasoning pair; teachers and students share one forward.
            segments = [
                p[f"{side}_{part}"]
                for side in ("teacher", "student")
                for part in ("caption", "cot")
                for p in batch
            ]
            inputs = render(
                processor, [p["prompt"] for p in batch] * 4, [p["image"] for p in batch] * 4, segments
            )
            if inputs["input_ids"].shape[1] > cfg["max_length"]:
                raise ValueError(
                    f"a warmup pair renders to {inputs['input_ids'].shape[1]} tokens, over "
                    f"max_length={cfg['max_length']}; raise it rather than truncate the segment"
                )
            scores, balance = disc(inputs, router_aux=True)
            teacher, student = scores.chunk(2)
            pair_loss = bradley_terry(teacher, student)
            ((pair_loss + aux_coef * balance) / cfg["grad_accum"]).backward()
        torch.nn.utils.clip_grad_norm_(disc.parameters(), cfg["grad_clip"])
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        run.record(
            step + 1,
            loss=pair_loss.item(),
            balance=balance.item(),
            acc=(teacher > student).float().mean().item(),
            gap=(teacher - student).mean().item(),
        )
    disc.save(args.out)
    save_processor(processor, args.model, args.out)
    losses = run.metric("loss")
    run.finish(
        {
            "pairs": len(pairs),
            "first_loss": losses[0],
            "final_loss": losses[-1],
            "final_acc": run.metric("acc")[-1],
        }
    )
