"""The upcycle and warmup stages: load, build or train, save, prove, write the manifest."""

from __future__ import annotations

import math
import time

import torch

from prism.core.errors import InputError
from prism.core.losses import bradley_terry
from prism.core.manifest import MANIFEST, write_manifest
from prism.core.modeling import cap_image_pixels, load_model, load_processor, model_config, save_processor
from prism.core.training import TrainingRun, epoch_batch, optimizer_and_schedule, setup
from prism.data import synthetic
from prism.data.formats import read_warmup_pairs
from prism.discriminator.accelerated import AcceleratedCheckpoint, accelerator_for
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


def render_pairs(processor, pairs: list[dict], sees_images: bool) -> dict:
    """Teacher then student, caption then reasoning: 4 rows per line, rendered by the one `render`."""
    segments = [
        p[f"{side}_{part}"] for side in ("teacher", "student") for part in ("caption", "cot") for p in pairs
    ]
    images = [p["image"] for p in pairs] * 4 if sees_images else None
    return render(processor, [p["prompt"] for p in pairs] * 4, images, segments)


def within_length(processor, pairs: list[dict], max_length: int, sees_images: bool) -> list[dict]:
    """The lines whose four renderings all fit: over-long ones are left out (and counted), never cut."""
    rendered = render_pairs(processor, pairs, sees_images)
    lengths = rendered["attention_mask"].sum(-1).view(4, len(pairs)).max(0).values
    return [pair for pair, length in zip(pairs, lengths.tolist(), strict=True) if length <= max_length]


@torch.no_grad()
def heldout_metrics(disc, processor, pairs: list[dict], batch_size: int) -> dict:
    """Pairwise accuracy and BT loss on held-out lines, dropout off."""
    was_training = disc.training
    disc.eval()
    teacher, student = [], []
    for start in range(0, len(pairs), batch_size):
        scores = disc(render_pairs(processor, pairs[start : start + batch_size], disc.sees_images))
        t, s = scores.chunk(2)
        teacher.append(t)
        student.append(s)
    disc.train(was_training)
    teacher, student = torch.cat(teacher), torch.cat(student)
    return {"acc": (teacher > student).float().mean().item(), "loss": bradley_terry(teacher, student).item()}


def warmup_stage(args) -> None:
    cfg, sees_images = args.config["warmup"], args.config["sees_images"]
    setup(args.threads, cfg["seed"])
    text_config = model_config(args.model).get("text_config", {})
    moe = bool(text_config.get("num_experts") or text_config.get("num_local_experts"))
    if args.config["architecture"] == "moe" and not moe:
        raise InputError(
            f"{args.model}: a dense model (its text_config has no experts), but the warmup trains the "
            "upcycled MoE discriminator; point --model at the upcycle stage's output"
        )
    lines = read_warmup_pairs(args.data / "warmup_pairwise.jsonl")
    processor = load_processor(args.model)
    cap_image_pixels(processor, cfg["max_pixels"])
    fitting = [
        p
        for i in range(0, len(lines), 64)
        for p in within_length(processor, lines[i : i + 64], cfg["max_length"], sees_images)
    ]
    heldout, pairs = fitting[: cfg["heldout_pairs"]], fitting[cfg["heldout_pairs"] :]
    if not pairs:
        raise ValueError(
            f"no warmup pairs left to train on: {len(lines)} lines, {len(lines) - len(fitting)} "
            f"over max_length={cfg['max_length']}, {len(heldout)} held out"
        )
    print(
        f"{len(pairs)} training pairs, {len(heldout)} held out, {len(lines) - len(fitting)} over max_length "
        f"{cfg['max_length']} left out; scored {'with' if sees_images else 'without'} their images",
        flush=True,
    )
    accelerator = accelerator_for(cfg["engine"], cfg["grad_accum"])
    world, rank = accelerator.num_processes, accelerator.process_index
    disc = Discriminator(load_model(args.model), args.config["value_head_dropout"], sees_images)
    before = heldout_metrics(disc, processor, heldout, cfg["batch_size"]) if heldout and rank == 0 else {}
    aux_coef = disc.backbone.config.text_config.router_aux_loss_coef if moe else 0.0  # no router to balance
    global_batch = cfg["batch_size"] * world
    total = max(1, math.ceil(len(pairs) / global_batch) * cfg["epochs"] // cfg["grad_accum"])
    optimizer, schedule = optimizer_and_schedule(disc.parameters(), cfg, total)
    disc, optimizer = accelerator.prepare(disc, optimizer)
    accelerator.register_for_checkpointing(schedule)
    checkpoint = AcceleratedCheckpoint(accelerator, args.work, every=max(1, total // 4))
    run = TrainingRun(args, "warmup_discriminator", total, {}, checkpoint, main=accelerator.is_main_process)
    disc.train()
    for step in run.steps():
        for micro in range(cfg["grad_accum"]):
            shared = epoch_batch(pairs, cfg["seed"], step * cfg["grad_accum"] + micro, global_batch)
            batch = shared[rank::world] or shared[:1]  # each rank its share of the global batch
            with accelerator.accumulate(disc):
                scores, balance = disc(render_pairs(processor, batch, sees_images), router_aux=True)
                teacher, student = scores.chunk(2)
                pair_loss = bradley_terry(teacher, student)
                accelerator.backward(pair_loss + aux_coef * balance)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(disc.parameters(), cfg["grad_clip"])
                    optimizer.step()
                    optimizer.zero_grad()
        schedule.step()
        logged = torch.stack(
            [
                pair_loss.detach(),
                balance.detach(),
                (teacher > student).float().mean(),
                (teacher - student).mean().detach(),
            ]
        )
        loss, balance_loss, acc, gap = accelerator.reduce(logged, "mean").tolist()
        run.record(step + 1, loss=loss, balance=balance_loss, acc=acc, gap=gap)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    disc = accelerator.unwrap_model(disc)
    after = heldout_metrics(disc, processor, heldout, cfg["batch_size"]) if heldout else {}
    disc.save(args.out)
    save_processor(processor, args.model, args.out)
    losses = run.metric("loss")
    run.finish(
        {
            "pairs": len(pairs),
            "processes": world,
            "over_max_length": len(lines) - len(fitting),
            "first_loss": losses[0],
            "final_loss": losses[-1],
            **{f"heldout_{k}_before": v for k, v in before.items()},
            **{f"heldout_{k}_after": v for k, v in after.items()},
        }
    )
