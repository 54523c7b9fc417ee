"""CPU SFT engine: cross-entropy on the assistant turn, AdamW with warmup + cosine, resumable."""

from __future__ import annotations

import math
import random
import shutil
import time

import torch

from prism.core.manifest import MANIFEST, write_manifest
from prism.core.modeling import load_model, load_processor, save_pretrained, supervised_batch
from prism.core.training import Checkpoint, MetricLog, lr_lambda, setup
from prism.data.formats import read_sft_examples


def run(args) -> None:
    cfg, started = args.config, time.time()
    setup(args.threads, cfg["seed"])
    rows = read_sft_examples(args.data)
    processor, model = load_processor(args.model), load_model(args.model)
    if cfg["freeze_vision_tower"]:
        model.model.visual.requires_grad_(False)
    batches_per_epoch = math.ceil(len(rows) / cfg["batch_size"])
    total = batches_per_epoch * cfg["epochs"] // cfg["grad_accum"]
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg["lr"], weight_decay=cfg["weight_decay"]
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(total, round(cfg["warmup_ratio"] * total), cfg["scheduler"])
    )
    state = {"model": model, "optimizer": optimizer, "schedule": schedule}
    checkpoint = Checkpoint(args.work, every=max(1, total // 4))
    start = checkpoint.load(state)
    log = MetricLog(args.work / "metrics.csv", total)
    log.reset_after(start)
    model.train()
    for step in range(start, total):
        for micro in range(cfg["grad_accum"]):
            index = step * cfg["grad_accum"] + micro
            epoch, position = divmod(index, batches_per_epoch)
            order = list(range(len(rows)))
            random.Random(cfg["seed"] + epoch).shuffle(order)  # a pure function of the step: resumable
            picked = [
                rows[i] for i in order[position * cfg["batch_size"] : (position + 1) * cfg["batch_size"]]
            ]
            batch = supervised_batch(processor, picked, [r["response"] for r in picked], cfg["max_length"])
            loss = model(**batch).loss / cfg["grad_accum"]
            loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        log.log(step + 1, loss=loss.item() * cfg["grad_accum"], lr=schedule.get_last_lr()[0])
        checkpoint.save(step + 1, state)
    save_pretrained(model, processor, args.model, args.out)
    shutil.copy(args.work / "metrics.csv", args.out / "metrics.csv")
    losses = [float(r["loss"]) for r in log.rows()]
    metrics = {"steps": total, "examples": len(rows), "first_loss": losses[0], "final_loss": losses[-1]}
    write_manifest(
        args.out / MANIFEST,
        "sft",
        [f"{args.model}/{MANIFEST}", f"{args.data}/{MANIFEST}"],
        cfg,
        metrics,
        started,
    )
