"""CPU SFT engine: cross-entropy on the assistant turn, AdamW with warmup + cosine, resumable."""

from __future__ import annotations

import math

import torch

from prism.core.modeling import load_model, load_processor, save_pretrained, supervised_batch
from prism.core.training import TrainingRun, epoch_batch, optimizer_and_schedule, setup
from prism.data.formats import read_sft_examples


class EncodedExamples:
    """Each example tokenized with its image once, not once an epoch: a batch is the right-padded
    collation of its examples' supervised_batch encodings, the batch supervised_batch makes of them."""

    def __init__(self, processor, rows: list[dict], max_length: int):
        self.pad_id = processor.tokenizer.pad_token_id
        self.encoded = {
            id(row): supervised_batch(processor, [row], [row["response"]], max_length) for row in rows
        }

    def batch(self, rows: list[dict]) -> dict:
        examples = [self.encoded[id(row)] for row in rows]
        width = max(e["input_ids"].shape[1] for e in examples)
        padding = {"input_ids": self.pad_id, "attention_mask": 0, "mm_token_type_ids": 0, "labels": -100}
        batch = {
            key: torch.cat(
                [torch.nn.functional.pad(e[key], (0, width - e[key].shape[1]), value=fill) for e in examples]
            )
            for key, fill in padding.items()
        }
        for key in ("pixel_values", "image_grid_thw"):
            batch[key] = torch.cat([e[key] for e in examples])
        return batch


def loss_window(batch: dict) -> dict:
    """The batch with logits kept only from the token before its first label on: the prompt's logits
    carry no label (a tiny example is mostly system prompt), so the loss is the same, for less work."""
    labels = batch["labels"]
    first_label = int((labels != -100).any(0).nonzero()[0])
    keep = labels.shape[1] - first_label + 1
    return {**batch, "labels": labels[:, -keep:], "logits_to_keep": keep}


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
    examples = EncodedExamples(processor, rows, cfg["max_length"])
    model.train()
    for step in run.steps():
        for micro in range(cfg["grad_accum"]):
            picked = epoch_batch(rows, cfg["seed"], step * cfg["grad_accum"] + micro, cfg["batch_size"])
            loss = model(**loss_window(examples.batch(picked))).loss / cfg["grad_accum"]
            loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        run.record(step + 1, loss=loss.item() * cfg["grad_accum"], lr=schedule.get_last_lr()[0])
    save_pretrained(model, processor, args.model, args.out)
    losses = run.metric("loss")
    run.finish(
        {
            "examples": len(rows),
            "first_loss": losses[0],
            "final_loss": losses[-1],
        }
    )
