"""The upcycle and warmup stages: load, build or train, save, prove, write the manifest."""

from __future__ import annotations

import json
import math
import time

import torch
from accelerate.utils import gather_object

from prism.core.errors import InputError
from prism.core.losses import bradley_terry
from prism.core.manifest import MANIFEST, peak_memory, peak_memory_per_rank, write_manifest
from prism.core.modeling import cap_image_pixels, load_model, load_processor, model_config, save_processor
from prism.core.tracking import AcceleratedCurves, job_tracking
from prism.core.training import TrainingRun, epoch_batch, optimizer_and_schedule, setup
from prism.data import synthetic
from prism.discriminator.accelerated import AcceleratedCheckpoint, accelerator_for
from prism.discriminator.model import Discriminator, render
from prism.discriminator.pairs import WarmupLines, pairs_of, sequences
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


def render_pairs(processor, data: WarmupLines, pairs: list, max_side: int, sees_images: bool) -> dict:
    """A batch of comparison pairs as one forward: its teachers then its students, by the one `render`."""
    return render(processor, *sequences(data, pairs, max_side, sees_images))


def to_device(batch: dict, device) -> dict:
    """Neither DeepSpeed nor Accelerate moves a model's inputs: each batch goes where the model is."""
    return {key: value.to(device) for key, value in batch.items()}


def fitting_lines(processor, data: WarmupLines, lines: list[int], cfg: dict, sees_images: bool) -> list[int]:
    """The lines whose four renderings all fit max_length: over-long ones are left out (and counted), never
    cut. Rendered 32 lines (64 pairs) at a time, images loaded per chunk."""
    kept = []
    for start in range(0, len(lines), 32):
        chunk = lines[start : start + 32]
        rendered = render_pairs(processor, data, pairs_of(chunk), cfg["max_image_side"], sees_images)
        lengths = rendered["attention_mask"].sum(-1).view(2, len(chunk), 2).amax(dim=(0, 2))
        kept += [
            line for line, length in zip(chunk, lengths.tolist(), strict=True) if length <= cfg["max_length"]
        ]
    return kept


@torch.no_grad()
def heldout_metrics(
    accelerator, disc, processor, data, lines: list[int], cfg: dict, sees_images: bool
) -> dict:
    """Pairwise accuracy and BT loss on held-out lines, dropout off, each process scoring its share."""
    was_training = disc.training
    disc.eval()
    mine, scored = pairs_of(lines)[accelerator.process_index :: accelerator.num_processes], []
    for start in range(0, len(mine), cfg["batch_size"]):
        batch = render_pairs(
            processor, data, mine[start : start + cfg["batch_size"]], cfg["max_image_side"], sees_images
        )
        teacher, student = disc(to_device(batch, accelerator.device)).float().chunk(2)
        scored += list(zip(teacher.tolist(), student.tolist(), strict=True))
    disc.train(was_training)
    teacher, student = torch.tensor(gather_object(scored)).T
    return {"acc": (teacher > student).float().mean().item(), "loss": bradley_terry(teacher, student).item()}


def warmup_backbone(path, cfg: dict):
    """The backbone as the reference trains it (method-reference §2.4): bf16 on the GPUs, activations
    recomputed in the backward when gradient checkpointing is on."""
    from transformers import AutoModelForImageTextToText

    dtype = torch.bfloat16 if cfg["engine"] == "accelerate" else torch.float32
    backbone = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
    if cfg["gradient_checkpointing"]:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        backbone.config.use_cache = False
    return backbone


def warmup_stage(args) -> None:
    cfg, sees_images = args.config["warmup"], args.config["sees_images"]
    text_config = model_config(args.model).get("text_config", {})
    moe = bool(text_config.get("num_experts") or text_config.get("num_local_experts"))
    if args.config["architecture"] == "moe" and not moe:
        raise InputError(
            f"{args.model}: a dense model (its text_config has no experts), but the warmup trains the "
            "upcycled MoE discriminator; point --model at the upcycle stage's output"
        )
    tracking = job_tracking(getattr(args, "tracking", None), args.work, "warmup_discriminator")
    accelerator = accelerator_for(cfg["engine"], cfg["grad_accum"], cfg["batch_size"], tracking)
    world, rank = accelerator.num_processes, accelerator.process_index
    setup(max(1, args.threads // world), cfg["seed"])  # the job's CPUs, shared by its processes
    data = WarmupLines(args.data / "warmup_pairwise.jsonl")
    processor = load_processor(args.model)
    cap_image_pixels(processor, cfg["max_pixels"])
    # Each process checks the lengths of its share of the lines, once; all then train on the same list.
    mine = fitting_lines(processor, data, list(range(len(data)))[rank::world], cfg, sees_images)
    fitting = sorted(gather_object(mine))
    heldout, training = fitting[: cfg["heldout_pairs"]], fitting[cfg["heldout_pairs"] :]
    pairs = pairs_of(training)
    if not pairs:
        raise ValueError(
            f"no warmup pairs left to train on: {len(data)} lines, {len(data) - len(fitting)} "
            f"over max_length={cfg['max_length']}, {len(heldout)} held out"
        )
    global_batch = cfg["batch_size"] * world
    total = max(1, math.ceil(len(pairs) / global_batch) * cfg["epochs"] // cfg["grad_accum"])
    if accelerator.is_main_process:
        print(
            f"{len(training)} training lines ({len(pairs)} pairs), {len(heldout)} held out, "
            f"{len(data) - len(fitting)} over max_length {cfg['max_length']} left out; scored "
            f"{'with' if sees_images else 'without'} their images; {cfg['batch_size']} pairs "
            f"({2 * cfg['batch_size']} sequences) per process and forward, "
            f"{global_batch * cfg['grad_accum']} "
            f"pairs per optimizer step, {total} steps",
            flush=True,
        )
    disc = Discriminator(warmup_backbone(args.model, cfg), args.config["value_head_dropout"], sees_images)
    aux_coef = disc.backbone.config.text_config.router_aux_loss_coef if moe else 0.0  # no router to balance
    optimizer, schedule = optimizer_and_schedule(disc.parameters(), cfg, total)
    disc, optimizer = accelerator.prepare(disc, optimizer)
    accelerator.register_for_checkpointing(schedule)
    checkpoint = AcceleratedCheckpoint(accelerator, args.work, every=max(1, total // 4))
    before = heldout_before(
        accelerator, checkpoint, args.work, disc, processor, data, heldout, cfg, sees_images
    )
    main = accelerator.is_main_process
    curves = AcceleratedCurves(accelerator, tracking, "warmup", args.config) if main else None
    run = TrainingRun(args, "warmup_discriminator", total, {}, checkpoint, main=main, curves=curves)
    disc.train()
    for step in run.steps():
        for micro in range(cfg["grad_accum"]):
            shared = epoch_batch(pairs, cfg["seed"], step * cfg["grad_accum"] + micro, global_batch)
            batch = shared[rank::world] or shared[:1]  # each rank its share of the global batch
            with accelerator.accumulate(disc):
                inputs = render_pairs(processor, data, batch, cfg["max_image_side"], sees_images)
                scores, balance = disc(to_device(inputs, accelerator.device), router_aux=True)
                teacher, student = scores.float().chunk(2)
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
                balance.detach().float(),
                (teacher > student).float().mean(),
                (teacher - student).mean().detach(),
            ]
        )
        loss, balance_loss, acc, gap = accelerator.reduce(logged, "mean").tolist()
        run.record(step + 1, loss=loss, balance=balance_loss, acc=acc, gap=gap)
    after = heldout_metrics(accelerator, disc, processor, data, heldout, cfg, sees_images) if heldout else {}
    peaks = gather_object([peak_memory()])  # every rank's, in rank order
    if not accelerator.is_main_process:
        return
    disc = accelerator.unwrap_model(disc)
    disc.save(args.out)
    save_processor(processor, args.model, args.out)
    losses = run.metric("loss")
    run.finish(
        {
            "pairs": len(pairs),
            "lines": len(training),
            "processes": world,
            "pairs_per_step": global_batch * cfg["grad_accum"],
            "sequences_per_forward": 2 * cfg["batch_size"],
            "over_max_length": len(data) - len(fitting),
            "first_loss": losses[0],
            "final_loss": losses[-1],
            **{f"heldout_{k}_before": v for k, v in before.items()},
            **{f"heldout_{k}_after": v for k, v in after.items()},
            "peak_memory": peak_memory_per_rank(peaks),
        }
    )


def heldout_before(accelerator, checkpoint, work, disc, processor, data, heldout, cfg, sees_images) -> dict:
    """The held-out metrics of the untrained model, measured by all processes on the prepared model (on the
    GPUs), once: a resumed run reads them from the work directory."""
    saved = work / "heldout_before.json"
    if not heldout:
        return {}
    if checkpoint.complete() and saved.is_file():
        return json.loads(saved.read_text())
    before = heldout_metrics(accelerator, disc, processor, data, heldout, cfg, sees_images)
    if accelerator.is_main_process:
        work.mkdir(parents=True, exist_ok=True)
        saved.with_suffix(".tmp").write_text(json.dumps(before))
        saved.with_suffix(".tmp").replace(saved)
    return before
