"""Tiny random dense Qwen3-VL models with an offline tokenizer and image-only processor.

Configs follow tiny-mode-reference §1 (the shapes measured to work on CPU with transformers 5.9).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from prism.core.config import TinyModel
from prism.data import synthetic

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Added but not special, as in Qwen3: decoding with skip_special_tokens keeps them.
FORMAT_TOKENS = ["<caption>", "</caption>", "<think>", "</think>", "<answer>", "</answer>"]
VOCAB_SIZE = 512
HEAD_DIM = 16

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string -%}{{ message.content }}"
    "{%- else -%}{%- for item in message.content -%}"
    "{%- if item.type == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif item.type == 'text' -%}{{ item.text }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def build_tokenizer():
    from transformers import PreTrainedTokenizerFast

    from prism.core.prompts import SYSTEM_PROMPT

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(SPECIAL_TOKENS) - len(FORMAT_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([SYSTEM_PROMPT, *synthetic.corpus()], trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    tokenizer.add_tokens(FORMAT_TOKENS)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_processor(tokenizer):
    from transformers import Qwen2VLImageProcessorPil

    from prism.data.tiny_processing import Qwen3VLProcessor

    image_processor = Qwen2VLImageProcessorPil(
        patch_size=16,
        temporal_patch_size=2,
        merge_size=2,
        size={"shortest_edge": 32 * 32, "longest_edge": 128 * 128},
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    return Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def dense_config(spec: TinyModel, tokenizer):
    from transformers import Qwen3VLConfig

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    heads = spec.num_attention_heads
    head_dim = spec.hidden_size // heads
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        head_dim=head_dim,
        hidden_act="silu",
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        attention_bias=False,
        tie_word_embeddings=True,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 5_000_000.0,
            "mrope_section": _mrope_section(head_dim),
            "mrope_interleaved": True,
        },
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        in_channels=3,
        patch_size=16,
        temporal_patch_size=2,
        spatial_merge_size=2,
        out_hidden_size=spec.hidden_size,
        num_position_embeddings=64,
        deepstack_visual_indexes=[0, 1],
        hidden_act="gelu_pytorch_tanh",
    )
    return Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        tie_word_embeddings=True,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def _mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary pairs over (time, height, width) like the real models (e.g. 64 -> 24,20,20)."""
    half = head_dim // 2
    height = width = half * 5 // 16
    return [half - height - width, height, width]


def build(spec: TinyModel, out_dir: str | Path) -> dict:
    """Write a random tiny dense Qwen3-VL with tokenizer and processor to `out_dir`; return its facts."""
    from transformers import GenerationConfig, Qwen3VLForConditionalGeneration

    out_dir = Path(out_dir)
    torch.manual_seed(spec.seed)
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    config = dense_config(spec, tokenizer)
    model = Qwen3VLForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        eos_token_id=config.text_config.eos_token_id, pad_token_id=config.text_config.pad_token_id
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    shutil.copy(Path(__file__).with_name("tiny_processing.py"), out_dir / "tiny_processing.py")
    _register_processor(out_dir)
    return {"parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer)}


def _register_processor(out_dir: Path) -> None:
    """Point AutoProcessor and verl's hf_processor at the image-only class (trust_remote_code)."""
    path = out_dir / "processor_config.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    config["processor_class"] = "Qwen3VLProcessor"
    config["auto_map"] = {"AutoProcessor": "tiny_processing.Qwen3VLProcessor"}
    path.write_text(json.dumps(config, indent=2))
