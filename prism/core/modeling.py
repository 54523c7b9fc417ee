"""Policy I/O on Hugging Face models, shared by the CPU engines: encode, generate, score log-probs.

Rows carry a verl-style `prompt` (chat list with `<image>` placeholders) and one PIL image.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from prism.core.errors import InputError
from prism.core.prompts import to_chat


def model_config(path: str | Path) -> dict:
    """A model directory's config.json, or an InputError naming the directory."""
    import json

    config = Path(path) / "config.json"
    if not config.exists():
        raise InputError(f"{path}: no config.json, so this is not a Hugging Face model directory")
    return json.loads(config.read_text())


def load_processor(path: str):
    from transformers import AutoProcessor

    model_config(path)
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    if not hasattr(processor, "image_processor"):
        raise ValueError(
            f"{path}: AutoProcessor returned no image processor; is processor_config.json there?"
        )
    return processor


def load_model(path: str):
    from transformers import AutoModelForImageTextToText

    model_config(path)
    return AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)


def cap_image_pixels(processor, max_pixels: int) -> None:
    """Resize images to at most `max_pixels` (transformers 5 reads `size.longest_edge`; a `max_pixels`
    attribute set on the processor is silently ignored)."""
    processor.image_processor.size.longest_edge = max_pixels


def chat_text(processor, messages: list[dict], response: str | None = None) -> str:
    """Render a prompt (ending in the assistant header), or a whole conversation when `response` is given."""
    chat = to_chat(messages)
    if response is None:
        return processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    chat = [*chat, {"role": "assistant", "content": response}]
    return processor.apply_chat_template(chat, add_generation_prompt=False, tokenize=False)


def encode(processor, texts: list[str], images: list, padding_side: str = "left") -> dict:
    """Tokenize texts with their images; every output carries mm_token_type_ids (transformers 5)."""
    processor.tokenizer.padding_side = padding_side
    batch = processor(text=texts, images=images, padding=True, return_tensors="pt")
    return dict(batch)


@dataclass
class Rollouts:
    """Sampled responses with what the policy update needs."""

    inputs: dict  # prompt + response, ready for a forward pass
    prompt_length: int
    response_ids: torch.Tensor  # (B, R), pad after the end token
    response_mask: torch.Tensor  # (B, R), 1 up to and including the end token
    texts: list[str]
    truncated: torch.Tensor  # (B,) bool: no end token within the length budget

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)


@torch.no_grad()
def generate(
    model, processor, rows: list[dict], max_new_tokens: int, temperature: float, top_p: float = 1.0
) -> Rollouts:
    """Sample one response per row (repeat rows for a group); temperature 0 means greedy."""
    tokenizer = processor.tokenizer
    prompts = encode(processor, [chat_text(processor, r["prompt"]) for r in rows], [r["image"] for r in rows])
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p}
        if temperature > 0
        else {"do_sample": False}
    )
    was_training = model.training
    model.eval()
    # A response holding vision or turn markers cannot be scored again, so they are never sampled.
    never = [i for i in tokenizer.all_special_ids if i != tokenizer.eos_token_id]
    out = model.generate(
        **prompts,
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        suppress_tokens=never,
        **sampling,
    )
    model.train(was_training)
    prompt_length = prompts["input_ids"].shape[1]
    response_ids = out[:, prompt_length:]
    is_end = response_ids == tokenizer.eos_token_id
    after_end = (is_end.cumsum(-1) - is_end.long()) > 0
    response_mask = (~after_end).long()
    response_ids = response_ids.masked_fill(after_end, tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(response_ids, skip_special_tokens=True)
    inputs = dict(prompts)
    inputs["input_ids"] = torch.cat([prompts["input_ids"], response_ids], dim=1)
    inputs["attention_mask"] = torch.cat([prompts["attention_mask"], response_mask], dim=1)
    inputs["mm_token_type_ids"] = torch.cat(
        [prompts["mm_token_type_ids"], torch.zeros_like(response_ids)], dim=1
    )
    return Rollouts(inputs, prompt_length, response_ids, response_mask, texts, ~is_end.any(-1))


def token_logprobs(model, inputs: dict, prompt_length: int) -> torch.Tensor:
    """log pi(y_t | x, y_<t) of every response token, (B, R). Logits only where they predict a response
    token: the prompt's are never read."""
    predicting = inputs["input_ids"].shape[1] - prompt_length + 1
    logits = model(**inputs, logits_to_keep=predicting).logits[:, :-1].float()
    targets = inputs["input_ids"][:, prompt_length:]
    return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def supervised_batch(processor, rows: list[dict], responses: list[str], max_length: int) -> dict:
    """Right-padded prompt+response batch with labels on the assistant turn only (SFT cross-entropy)."""
    images = [r["image"] for r in rows]
    full = encode(
        processor,
        [chat_text(processor, r["prompt"], y) for r, y in zip(rows, responses, strict=True)],
        images,
        padding_side="right",
    )
    prompt_lengths = encode(
        processor, [chat_text(processor, r["prompt"]) for r in rows], images, padding_side="right"
    )["attention_mask"].sum(-1)
    if full["input_ids"].shape[1] > max_length:
        raise ValueError(f"an example has {full['input_ids'].shape[1]} tokens, over max_length={max_length}")
    labels = full["input_ids"].masked_fill(full["attention_mask"] == 0, -100)
    for i, length in enumerate(prompt_lengths.tolist()):
        labels[i, :length] = -100
    return {**full, "labels": labels}


def save_pretrained(model, processor, source_dir: str | Path, out_dir: str | Path) -> None:
    """Save weights and processor, carrying over the source's remote-code processor files."""
    model.save_pretrained(out_dir)
    save_processor(processor, source_dir, out_dir)


def save_processor(processor, source_dir: str | Path, out_dir: str | Path) -> None:
    processor.save_pretrained(out_dir)
    for extra in [*Path(source_dir).glob("*.py"), Path(source_dir) / "processor_config.json"]:
        if extra.exists():
            shutil.copy(extra, Path(out_dir) / extra.name)
