"""Peak memory of the warmup's lazy pair reader on a synthetic pairwise set: the file checked once, then
pairs read in batches spread over the whole file, each image decoded and resized to 560 px per batch.

python benchmarks/warmup_reader_rss.py [--lines 10000] [--images 100] [--size 1024x768] [--batch-size 4]
    [--batches 250]

Lines share `--images` distinct image files (each line's image is still decoded on its own, as for a set
with one image per line); each line carries ~4 kB of caption and reasoning text, like the paper's set.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
import time
from pathlib import Path

from PIL import Image


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_set(root: Path, lines: int, images: int, size: tuple[int, int]) -> Path:
    rng = random.Random(0)
    for i in range(images):
        noise = Image.effect_noise(size, 64).convert("RGB")
        noise.save(root / f"{i:04d}.jpg", quality=90)
    words = "the triangle is left of the red circle so the answer is two".split()
    text = lambda n: " ".join(rng.choice(words) for _ in range(n))  # noqa: E731
    path = root / "warmup_pairwise.jsonl"
    with path.open("w") as handle:
        for i in range(lines):
            record = {"prompt": text(30), "image": f"{i % images:04d}.jpg"}
            for side in ("teacher", "student"):
                record[f"{side}_caption"], record[f"{side}_cot"] = text(60), text(300)
            handle.write(json.dumps(record) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--size", default="1024x768")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--batches", type=int, default=250)
    args = parser.parse_args()
    size = tuple(int(n) for n in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        path = write_set(Path(tmp), args.lines, args.images, size)
        from prism.discriminator.pairs import WarmupLines, pairs_of, sequences

        start, before = time.perf_counter(), rss_mb()
        data = WarmupLines(path)
        opened, after_open = time.perf_counter() - start, rss_mb()
        pairs = pairs_of(range(len(data)))
        stride = max(1, len(pairs) // args.batches)
        for first in range(0, len(pairs), stride)[: args.batches]:
            sequences(data, pairs[first : first + args.batch_size], 560, sees_images=True)
        elapsed = time.perf_counter() - start
        decoded_mb = size[0] * size[1] * 3 / 2**20
        print(
            f"{len(data)} lines ({path.stat().st_size / 2**20:.0f} MB jsonl), {len(pairs)} pairs, images "
            f"{args.size} ({decoded_mb:.2f} MB decoded each; all decoded at once: "
            f"{len(data) * decoded_mb / 1024:.1f} GB): peak RSS {before:.0f} MB before, "
            f"{after_open:.0f} MB after checking the file ({opened:.1f} s), {rss_mb():.0f} MB after "
            f"reading {args.batches} batches of {args.batch_size} pairs from all over the file "
            f"({elapsed:.1f} s)"
        )


if __name__ == "__main__":
    main()
