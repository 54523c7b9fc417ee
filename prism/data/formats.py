"""On-disk data formats the stages exchange, and readers that check them.

- SFT: LLaMA-Factory sharegpt multimodal JSON (`messages`, `images`) + dataset_info.json.
- warmup: the reference's pairwise jsonl (prompt, image, teacher/student caption and cot).
- align / rl / bench: verl-style parquet (prompt chat list, images, data_source, reward_model, extra_info;
  align adds teacher_caption / teacher_cot).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

from prism.core.errors import InputError

RL_COLUMNS = ("prompt", "images", "data_source", "reward_model", "extra_info")
ALIGN_COLUMNS = (*RL_COLUMNS, "teacher_caption", "teacher_cot")
WARMUP_FIELDS = ("prompt", "image", "teacher_caption", "teacher_cot", "student_caption", "student_cot")
DATA_SOURCE = "prism_synthetic_shapes"


class DataError(InputError):
    """A data file that the stages cannot read; the message names the file and what is wrong."""


def read_parquet_rows(path: str | Path, required: tuple[str, ...]) -> list[dict]:
    """Rows with a decoded PIL `image` and, where present, `ground_truth` and its `equivalent_answers`."""
    import pandas as pd

    path = Path(path)
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for unreadable files
        raise DataError(f"{path}: cannot read parquet ({err})") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing columns {missing}; has {list(frame.columns)}")
    rows = []
    for i, record in enumerate(frame.to_dict("records")):
        images = list(record["images"])
        if len(images) != 1:
            raise DataError(f"{path}: row {i} has {len(images)} images; the tiny engines take exactly one")
        row = dict(record, prompt=list(record["prompt"]), image=decode_image(images[0], f"{path} row {i}"))
        if "reward_model" in record:
            row["ground_truth"] = str(record["reward_model"]["ground_truth"])
            equivalents = (record.get("extra_info") or {}).get("equivalent_answers")  # copied at preparation
            row["equivalent_answers"] = () if equivalents is None else tuple(str(a) for a in equivalents)
        rows.append(row)
    return rows


def decode_image(item, where: str) -> Image.Image:
    data = item.get("bytes") if isinstance(item, dict) else item
    try:
        return Image.open(io.BytesIO(data)).convert("RGB")
    except Exception as err:
        raise DataError(f"{where}: unreadable image ({err})") from None


def read_sft_examples(directory: str | Path) -> list[dict]:
    """The sharegpt conversations registered in dataset_info.json, as rows + assistant responses."""
    from prism.core.prompts import prompt_messages

    directory = Path(directory)
    info = parse_json(read_text(directory / "dataset_info.json"), str(directory / "dataset_info.json"))
    rows = []
    for entry in info.values():
        source = directory / entry["file_name"]
        text = read_text(source)
        if source.suffix == ".jsonl":
            lines = enumerate(text.splitlines(), start=1)
            examples = [parse_json(line, f"{source}:{n}") for n, line in lines if line]
        else:
            examples = parse_json(text, str(source))
        for i, example in enumerate(examples):
            turns = {m.get("role"): m.get("content") for m in example.get("messages", [])}
            if len(example.get("images", [])) != 1 or "assistant" not in turns or "user" not in turns:
                raise DataError(f"{source}: example {i} needs one image, a user turn and an assistant reply")
            image = open_image(directory / example["images"][0], f"{source} example {i}")
            rows.append(
                {"prompt": prompt_messages(turns["user"]), "image": image, "response": turns["assistant"]}
            )
    return rows


def read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as err:
        raise DataError(f"{path}: cannot read the data file ({err.strerror})") from None


def parse_json(text: str, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: not valid JSON ({err})") from None


def open_image(path: Path, where: str) -> Image.Image:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{where}: cannot read image {path} ({err.strerror})") from None
    return decode_image({"bytes": data}, f"{where}: image {path}")
