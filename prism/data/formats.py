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

RL_COLUMNS = ("prompt", "images", "data_source", "reward_model", "extra_info")
ALIGN_COLUMNS = (*RL_COLUMNS, "teacher_caption", "teacher_cot")
WARMUP_FIELDS = ("prompt", "image", "teacher_caption", "teacher_cot", "student_caption", "student_cot")
DATA_SOURCE = "prism_synthetic_shapes"


class DataError(ValueError):
    """A data file that the stages cannot read; the message names the file and what is wrong."""


def read_parquet_rows(path: str | Path, required: tuple[str, ...]) -> list[dict]:
    """Rows with a decoded PIL `image` and, where present, `ground_truth`."""
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
        rows.append(row)
    return rows


def decode_image(item, where: str) -> Image.Image:
    data = item.get("bytes") if isinstance(item, dict) else item
    try:
        return Image.open(io.BytesIO(data)).convert("RGB")
    except Exception as err:
        raise DataError(f"{where}: unreadable image ({err})") from None


def read_warmup_pairs(path: str | Path) -> list[dict]:
    """Pairwise warmup lines with their image loaded; incomplete lines are refused, not skipped."""
    path = Path(path)
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        record = json.loads(line)
        empty = [f for f in WARMUP_FIELDS if not record.get(f)]
        if empty:
            raise DataError(f"{path}:{number}: empty or missing fields {empty}")
        image_path = path.parent / record["image"]
        record["image"] = decode_image({"bytes": image_path.read_bytes()}, f"{path}:{number}")
        pairs.append(record)
    return pairs


def read_sft_examples(directory: str | Path) -> list[dict]:
    """The sharegpt conversations registered in dataset_info.json, as rows + assistant responses."""
    from prism.core.prompts import prompt_messages

    directory = Path(directory)
    info = json.loads((directory / "dataset_info.json").read_text())
    rows = []
    for entry in info.values():
        for i, example in enumerate(json.loads((directory / entry["file_name"]).read_text())):
            turns = {m["role"]: m["content"] for m in example["messages"]}
            if len(example["images"]) != 1 or "assistant" not in turns:
                raise DataError(f"{directory / entry['file_name']}: example {i} needs one image and a reply")
            image = Image.open(directory / example["images"][0]).convert("RGB")
            rows.append(
                {"prompt": prompt_messages(turns["user"]), "image": image, "response": turns["assistant"]}
            )
    return rows
