"""The discriminator as a native `AutoModelForTokenClassification`, for verl's critic slot.

Imported in every verl worker through `critic.model.external_lib=prism.verl.models`. transformers 5.9 has no
token-classification class for `qwen3_vl(_moe)`, so without these verl falls back to trl's value-head
wrapper, which re-initialises the head on every load (integration-reference §3.2). These classes keep
`model_type` unchanged, so verl's Qwen3-VL patches (packed M-RoPE positions, remove-padding) still apply,
and they load our saved discriminator *with* its warmed head or refuse to load (method-reference B5).

The head is `Discriminator.v_head`: dropout, then one bias-free linear, on the final hidden state of every
token. The dropout is the warmup's (discriminator.json; the reference's 0.1 for the authors' release), not
the config's `classifier_dropout`, which verl zeroes. verl's engine runs the update's forward in train
mode and the scoring in eval mode, so, as in the reference and the CPU engine, rollouts are scored
without dropout and the update's scores are dropped out; the update's coefficients are those of the
eval-mode scores (`prism.verl.align_batch.surrogate_coefficients`). The head is called `score`, not
`v_head`, because verl takes any module with a `v_head` attribute for a trl wrapper and reads the wrong
output.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from transformers import AutoModelForTokenClassification, Qwen3VLConfig, Qwen3VLMoeConfig
from transformers.modeling_outputs import TokenClassifierOutput
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel, Qwen3VLPreTrainedModel
from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import Qwen3VLMoeModel, Qwen3VLMoePreTrainedModel

from prism.discriminator.model import HEAD_KEY, DiscriminatorError, find_head, head_dropout


class _DiscriminatorForTokenClassification:
    """Backbone (`self.model`) + a one-logit head on every token; logits (B, T, 1)."""

    backbone_class: type
    # the checkpoint's LM head and its own copy of the value head are not parameters of this class
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\.", r"^v_head\."]
    _keys_to_ignore_on_load_missing = [r"^score\."]  # filled from the head file right after loading

    def __init__(self, config):
        super().__init__(config)
        self.model = self.backbone_class(config)
        self.dropout = nn.Dropout(0.1)  # the saved discriminator's own, set by from_pretrained
        self.score = nn.Linear(config.text_config.hidden_size, 1, bias=False)
        self.post_init()

    def forward(self, **inputs) -> TokenClassifierOutput:
        """Backbone inputs (ids, positions, mask, pixel values, ...) -> per-token logits."""
        if inputs.get("pixel_values") is None or inputs.get("pixel_values_videos") is not None:
            hidden = self.model(**inputs)[0]
        else:
            hidden = self._hidden_states_encoding_each_image_once(**inputs)
        return TokenClassifierOutput(logits=self.score(self.dropout(hidden)))

    def _hidden_states_encoding_each_image_once(
        self, input_ids, pixel_values, image_grid_thw, position_ids=None, mm_token_type_ids=None, **inputs
    ) -> torch.Tensor:
        """The backbone's forward (transformers' Qwen3-VL one, as verl's patch of it also runs it) with the
        vision tower run once per distinct image: every discriminator row of a prompt carries its own copy
        of the prompt's image, so a micro-batch holds each image many times. The language model gets the
        same inputs (embeddings with the image features in place, deepstack features, positions)."""
        backbone = self.model
        distinct, inverse = distinct_images(pixel_values, image_grid_thw)
        features = backbone.get_image_features(pixel_values[distinct.pixels], distinct.grid, return_dict=True)
        per_image = features.pooler_output
        counts = [len(embeds) for embeds in per_image]
        image_embeds = torch.cat([per_image[d] for d in inverse])
        deepstack = [
            torch.cat([level.split(counts)[d] for d in inverse]) for level in features.deepstack_features
        ]
        embeds = backbone.get_input_embeddings()(input_ids)
        image_embeds = image_embeds.to(embeds.device, embeds.dtype)
        image_mask, _ = backbone.get_placeholder_mask(
            input_ids, inputs_embeds=embeds, image_features=image_embeds
        )
        embeds = embeds.masked_scatter(image_mask, image_embeds)
        if position_ids is None:
            position_ids = backbone.compute_3d_position_ids(
                input_ids=input_ids,
                inputs_embeds=embeds,
                image_grid_thw=image_grid_thw,
                attention_mask=inputs.get("attention_mask"),
                mm_token_type_ids=mm_token_type_ids,
            )
        return backbone.language_model(
            input_ids=None,
            inputs_embeds=embeds,
            position_ids=position_ids,
            visual_pos_masks=image_mask[..., 0],
            deepstack_visual_embeds=deepstack,
            **inputs,
        )[0]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """The backbone as transformers loads it, then the warmed head; a missing head is an error."""
        path = Path(pretrained_model_name_or_path)
        head = find_head(path)  # before the backbone: a plain model fails at once
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        expected = tuple(model.score.weight.shape)
        if tuple(head.shape) != expected:
            raise DiscriminatorError(
                f"{path}: value head {HEAD_KEY} has shape {tuple(head.shape)}, but the backbone's hidden "
                f"size needs {expected}; the head belongs to another model"
            )
        with torch.no_grad():
            model.score.weight.copy_(head)
        model.dropout.p = head_dropout(path)
        return model


class DistinctImages(NamedTuple):
    pixels: torch.Tensor  # (rows,) the pixel rows of the distinct images, in the order of `grid`
    grid: torch.Tensor  # (distinct, 3)


def distinct_images(
    pixel_values: torch.Tensor, image_grid_thw: torch.Tensor
) -> tuple[DistinctImages, list[int]]:
    """The distinct images among a batch's (pixel rows of each image, one after the other; its grid), and
    for each image the index of its distinct one."""
    sizes = image_grid_thw.prod(-1).tolist()
    starts = [0, *torch.tensor(sizes).cumsum(0).tolist()]
    images = pixel_values.split(sizes)
    kept: list[int] = []
    inverse = []
    for i, image in enumerate(images):
        same = (
            d
            for d, k in enumerate(kept)
            if torch.equal(image_grid_thw[k], image_grid_thw[i]) and torch.equal(images[k], image)
        )
        found = next(same, None)
        if found is None:
            kept.append(i)
            found = len(kept) - 1
        inverse.append(found)
    rows = torch.cat([torch.arange(starts[k], starts[k + 1]) for k in kept]).to(pixel_values.device)
    return DistinctImages(rows, image_grid_thw[kept]), inverse


class PrismQwen3VLMoeForTokenClassification(_DiscriminatorForTokenClassification, Qwen3VLMoePreTrainedModel):
    """The upcycled MoE discriminator of the paper."""

    backbone_class = Qwen3VLMoeModel


class PrismQwen3VLForTokenClassification(_DiscriminatorForTokenClassification, Qwen3VLPreTrainedModel):
    """The dense discriminator (the dense-discriminator ablation, and tiny mode)."""

    backbone_class = Qwen3VLModel


AutoModelForTokenClassification.register(Qwen3VLMoeConfig, PrismQwen3VLMoeForTokenClassification)
AutoModelForTokenClassification.register(Qwen3VLConfig, PrismQwen3VLForTokenClassification)
