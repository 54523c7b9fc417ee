"""CPU SFT engine: cross-entropy on the assistant turn, AdamW with warmup + cosine, resumable."""

from __future__ import annotations

import math

from prism.core.modeling import load_model, load_processor, save_pretrained, supervised_batch
from prism.core.training import TrainingRun, epoch_batch, optimizer_and_schedule, setup
from prism.data.formats import read_sft_examples


def run(args) -> None:
    cfg = args.config
    setup(args.threads, cfg["seed"])
    rows = read_sft_examples(args.data)
    processor, model = load_processor(args.model), load_model(args.model)
    if cfg["freeze_vision_tower"]:
        model.model.visual.requires_grad_(False)
    total = math.ceil(len(rows) / cfg["batch_size"]) * cfg["epochs"] // cfg["grad_accum"]
    optimizer, schedule = optimizer_and_schedule(
        [p for p in model.parameters() if p.requires_grad], cfg, total
    )
    run = TrainingRun(args, "sft", total, {"model": model, "optimizer": optimizer, "schedule": schedule})
    model.train()
    for step in run.steps():
        for micro in range(cfg["grad_accum"]):
            picked = epoch_batch(rows, cfg["seed"], step * cfg["grad_accum"] + micro, cfg["batch_size"])
            batch = supervised_batch(processor, picked, [r["response"] for r in picked], cfg["max_length"])
            loss = model(**batch).loss / cfg["grad_accum"]
            loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        run.record(step + 1, loss=loss.item() * cfg["grad_accum"], lr=schedule.get_last_lr()[0])
    save_pretrained(model, processor, args.model, args.out)
    losses = run.metric("loss")
    run.finish({"examples": len(rows), "first_loss": losses[0], "final_loss": losses[-1]})
