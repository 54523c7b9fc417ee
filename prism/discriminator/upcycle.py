"""Sparse upcycling (method-reference §1): dense Qwen3-VL -> Qwen3-VL-MoE, every layer, top-k routing.

Each expert is the dense MLP plus gaussian noise; routers are random; all else is copied. Saved in the
upstream expert layout (E, H, 2I) / (E, I, H) that vLLM and transformers 4.57 read; transformers 5
reloads it by transposing back (tiny-mode-reference §2).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

_DENSE_MLP = re.compile(r"^(.*\.layers\.\d+\.mlp)\.(gate_proj|up_proj|down_proj)\.weight$")


def moe_config(dense_config, num_experts: int, top_k: int, router_aux_loss_coef: float):
    from transformers import Qwen3VLMoeConfig

    text = dense_config.text_config.to_dict()
    text.update(
        num_experts=num_experts,
        num_experts_per_tok=top_k,
        moe_intermediate_size=text["intermediate_size"],
        decoder_sparse_step=1,
        mlp_only_layers=[],
        router_aux_loss_coef=router_aux_loss_coef,
    )
    keys = (
        "image_token_id",
        "video_token_id",
        "vision_start_token_id",
        "vision_end_token_id",
        "tie_word_embeddings",
    )
    return Qwen3VLMoeConfig(
        text_config=text,
        vision_config=dense_config.vision_config.to_dict(),
        **{k: getattr(dense_config, k) for k in keys},
    )


@torch.no_grad()
def upcycle(
    dense,
    num_experts: int,
    top_k: int,
    noise_std: float,
    router_std: float,
    router_aux_loss_coef: float,
    seed: int,
):
    from transformers import Qwen3VLMoeForConditionalGeneration

    generator = torch.Generator().manual_seed(seed)
    config = moe_config(dense.config, num_experts, top_k, router_aux_loss_coef)
    moe = Qwen3VLMoeForConditionalGeneration(config).to(dense.dtype)

    def noisy(weight):
        noise = torch.randn(weight.shape, generator=generator) * noise_std
        return weight + noise.to(weight.dtype)

    state, mlps = {}, {}
    for key, value in dense.state_dict().items():
        match = _DENSE_MLP.match(key)
        if match:
            mlps.setdefault(match.group(1), {})[match.group(2)] = value
        else:
            state[key] = value.clone()
    for prefix, weights in mlps.items():
        gate_up = torch.cat([weights["gate_proj"], weights["up_proj"]], dim=0)  # (2I, H): gate half first
        state[f"{prefix}.experts.gate_up_proj"] = torch.stack([noisy(gate_up) for _ in range(num_experts)])
        state[f"{prefix}.experts.down_proj"] = torch.stack(
            [noisy(weights["down_proj"]) for _ in range(num_experts)]
        )
        hidden = gate_up.shape[1]
        state[f"{prefix}.gate.weight"] = (
            torch.randn(num_experts, hidden, generator=generator) * router_std
        ).to(gate_up.dtype)
    moe.load_state_dict(state, strict=True)
    moe.tie_weights()
    return moe


def save_upstream_layout(model, out_dir: str | Path) -> None:
    """save_pretrained, then rewrite expert tensors transposed to the upstream (E, H, 2I) layout."""
    from safetensors.torch import load_file, save_file

    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    for shard in out_dir.glob("*.safetensors"):
        tensors = load_file(shard)
        changed = False
        for key in list(tensors):
            if key.endswith(("experts.gate_up_proj", "experts.down_proj")):
                tensors[key] = tensors[key].transpose(1, 2).contiguous()
                changed = True
        if changed:
            save_file(tensors, shard, metadata={"format": "pt"})
    (out_dir / "expert_layout.json").write_text(json.dumps({"gate_up_proj": "E,H,2I", "down_proj": "E,I,H"}))
