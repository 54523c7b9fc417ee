"""The discriminator: a Qwen3-VL(-MoE) backbone + value head, scored at each row's last real token.

Saved and loaded as one unit: a missing or mismatched head is an error, never a fresh random head
(method-reference B5). `render` is the one way a (prompt, image, segment) becomes model inputs, used by
warmup and alignment alike, so teacher and student end on the same token (B2, B4).

A discriminator that does not see images (the paper's "text-only discriminator" ablation) says so in its
discriminator.json, so every stage that scores with it renders without images: the same tokens as the
multimodal rendering, with each vision span (`<|vision_start|>` … `<|vision_end|>`) taken out.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from prism.core.errors import InputError
from prism.core.modeling import chat_text, encode
from prism.core.prompts import prompt_messages

HEAD_FILE = "value_head.safetensors"
HEAD_KEY = "v_head.1.weight"  # the released discriminator's name for the head
META_FILE = "discriminator.json"
VISION_SPAN = ("<|vision_start|>", "<|vision_end|>")


class DiscriminatorError(InputError):
    """A checkpoint that is not a discriminator, or whose head does not fit its backbone."""


class Discriminator(nn.Module):
    def __init__(self, backbone, dropout: float, sees_images: bool = True):
        super().__init__()
        self.backbone = backbone
        self.sees_images = sees_images
        hidden = backbone.config.text_config.hidden_size
        self.v_head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, 1, bias=False))
        nn.init.normal_(self.v_head[1].weight, std=0.02)

    def forward(self, inputs: dict, router_aux: bool = False):
        """Scores (B,) at the last attended token of each row, whatever the padding side."""
        out = self.backbone.model(**inputs, output_router_logits=router_aux)
        hidden = out.last_hidden_state
        mask = inputs["attention_mask"]
        last = mask.shape[1] - 1 - mask.flip(1).argmax(dim=1)
        scores = self.v_head(hidden[torch.arange(hidden.shape[0]), last]).squeeze(-1)
        if not router_aux:
            return scores
        return scores, self._balance_loss(out, mask)

    def _balance_loss(self, out, mask) -> torch.Tensor:
        from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import load_balancing_loss_func

        text = self.backbone.config.text_config
        router_logits = getattr(out, "router_logits", None)
        if not router_logits or not getattr(text, "num_experts", 0):
            return torch.zeros((), device=mask.device)
        return load_balancing_loss_func(router_logits, text.num_experts, text.num_experts_per_tok, mask)

    def save(self, out_dir: str | Path) -> None:
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        self.backbone.save_pretrained(out_dir)
        save_file({HEAD_KEY: self.v_head[1].weight.detach().contiguous()}, out_dir / HEAD_FILE)
        meta = {
            "hidden_size": self.v_head[1].in_features,
            "dropout": self.v_head[0].p,
            "sees_images": self.sees_images,
        }
        (out_dir / META_FILE).write_text(json.dumps(meta))

    @classmethod
    def load(cls, path: str | Path, dropout: float | None = None) -> Discriminator:
        """Backbone + head, or an error: the head comes from value_head.safetensors (ours) or from the
        backbone's own shards (the authors' release stores `v_head.1.weight` there)."""
        from transformers import AutoModelForImageTextToText

        path = Path(path)
        head = find_head(path)
        if dropout is None:
            dropout = head_dropout(path)
        backbone = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
        model = cls(backbone, dropout, sees_images(path))
        expected = tuple(model.v_head[1].weight.shape)
        if tuple(head.shape) != expected:
            raise DiscriminatorError(
                f"{path}: value head {HEAD_KEY} has shape {tuple(head.shape)}, but the backbone's hidden "
                f"size needs {expected}; the head belongs to another model"
            )
        model.v_head[1].weight.data.copy_(head)
        return model


def _meta(path: Path) -> dict:
    """What our warmup records beside the weights; the authors' release has none."""
    meta_file = Path(path) / META_FILE
    return json.loads(meta_file.read_text()) if meta_file.exists() else {}


def head_dropout(path: str | Path) -> float:
    """The dropout before the head in training: the warmup's, or the reference's 0.1 (authors' release)."""
    return _meta(Path(path)).get("dropout", 0.1)


def sees_images(path: str | Path) -> bool:
    """Whether a saved discriminator was trained on images (the authors' release was)."""
    return _meta(Path(path)).get("sees_images", True)


def find_head(path: Path) -> torch.Tensor:
    from safetensors import safe_open

    shards = [path / HEAD_FILE, *sorted(path.glob("model*.safetensors"))]
    for shard in shards:
        if shard.exists():
            with safe_open(shard, "pt") as handle:
                if HEAD_KEY in handle.keys():
                    return handle.get_tensor(HEAD_KEY)
    raise DiscriminatorError(
        f"{path}: no value head ({HEAD_KEY} in {HEAD_FILE} or the model shards); this is a plain model, not "
        "a discriminator checkpoint. Point discriminator.released at a warmed discriminator, or build one."
    )


def render(processor, questions: list[str], images: list | None, segments: list[str]) -> dict:
    """(prompt, image, segment) -> inputs: system + user[image, question] + assistant(segment), templated.
    Without images (None), the same tokens with the vision spans taken out, left-padded."""
    texts = [
        chat_text(processor, prompt_messages(q), segment)
        for q, segment in zip(questions, segments, strict=True)
    ]
    if images is not None:
        return encode(processor, texts, images)
    tokenizer = processor.tokenizer
    span = tokenizer.convert_tokens_to_ids(list(VISION_SPAN))
    rows = [without_vision_spans(tokenizer.encode(text, add_special_tokens=False), *span) for text in texts]
    tokenizer.padding_side = "left"
    return dict(tokenizer.pad({"input_ids": rows}, return_tensors="pt"))


def without_vision_spans(ids: list[int], vision_start: int, vision_end: int) -> list[int]:
    """Token ids with every vision span, its start and end tokens included, taken out."""
    kept, inside = [], False
    for token in ids:
        if token == vision_start:
            inside = True
        elif token == vision_end and inside:
            inside = False
        elif not inside:
            kept.append(token)
    return kept
