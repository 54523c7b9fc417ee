"""The warmup's comparison pairs, read the way the reference's PairwiseVLDataset reads them
(method-reference §2.2): each line of warmup_pairwise.jsonl holds two pairs, a caption pair and a
reasoning (cot) pair; each pair is a forward of two sequences, teacher and student.

The file is checked once, line by line, keeping only each line's byte offset: a line's text is read, and
its image decoded and resized, when a batch needs it. Memory stays bounded by the batch, not the data set
(~120k lines and images in the paper's set).
"""

from __future__ import annotations

import json
from array import array
from pathlib import Path

from PIL import Image

from prism.data.formats import WARMUP_FIELDS, DataError, open_image, parse_json

PARTS = ("caption", "cot")  # the two pairs of a line, in the reference's order


class WarmupLines:
    """The lines of a pairwise jsonl, checked on opening (fields, image file), read on demand."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.offsets = array("q")
        try:
            handle = self.path.open("rb")
        except OSError as err:
            raise DataError(f"{self.path}: cannot read the data file ({err.strerror})") from None
        with handle:
            offset = 0
            for number, raw in enumerate(handle, start=1):
                if raw.strip():
                    self._check(parse_json(raw, f"{self.path}:{number}"), number)
                    self.offsets.append(offset)
                offset += len(raw)

    def _check(self, record, number: int) -> None:
        empty = [f for f in WARMUP_FIELDS if not isinstance(record, dict) or not record.get(f)]
        if empty:
            raise DataError(f"{self.path}:{number}: empty or missing fields {empty}")
        image = self.path.parent / record["image"]
        if not image.is_file():
            raise DataError(f"{self.path}:{number}: cannot read image {image} (no such file)")

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: int) -> dict:
        with self.path.open("rb") as handle:
            handle.seek(self.offsets[index])
            return json.loads(handle.readline())

    def image(self, record: dict, max_side: int) -> Image.Image:
        """The line's image, decoded now and resized so its longer side is at most `max_side` (LANCZOS)."""
        image = open_image(self.path.parent / record["image"], str(self.path))
        longer = max(image.size)
        if longer > max_side:
            scale = max_side / longer
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.LANCZOS)
        return image


def pairs_of(lines: list[int]) -> list[tuple[int, str]]:
    """The comparison pairs of the given lines: (line, "caption") and (line, "cot") for each."""
    return [(line, part) for line in lines for part in PARTS]


def sequences(data: WarmupLines, pairs: list[tuple[int, str]], max_side: int, sees_images: bool):
    """(questions, images or None, segments) of a batch of pairs: its teachers, then its students."""
    records = {line: data[line] for line in dict.fromkeys(line for line, _ in pairs)}
    chosen = [(records[line], part) for line, part in pairs]
    segments = [record[f"{side}_{part}"] for side in ("teacher", "student") for record, part in chosen]
    questions = [record["prompt"] for record, _ in chosen] * 2
    if not sees_images:
        return questions, None, segments
    images = {line: data.image(records[line], max_side) for line in records}
    return questions, [images[line] for line, _ in pairs] * 2, segments
