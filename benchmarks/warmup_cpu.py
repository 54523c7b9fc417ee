"""Discriminator warmup cost on CPU for the tiny model: seconds per optimizer step and peak memory.

python benchmarks/warmup_cpu.py [--steps 20] [--batch-size 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch

from prism.core.config import TinyModel
from prism.core.losses import bradley_terry
from prism.core.modeling import load_model, load_processor
from prism.data.__main__ import main as make_data
from prism.discriminator.model import Discriminator
from prism.discriminator.pairs import WarmupLines, pairs_of
from prism.discriminator.stages import render_pairs
from prism.discriminator.upcycle import save_upstream_layout, upcycle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = {"source": "tiny", "tiny": TinyModel(intermediate_size=96, seed=1).model_dump()}
        make_data(["model", "--name", "disc", "--config", json.dumps(spec), "--out", str(tmp / "dense")])
        data = {"source": "synthetic", "synthetic": {"examples": args.batch_size * args.steps, "seed": 0}}
        make_data(["dataset", "--name", "warmup", "--config", json.dumps(data), "--out", str(tmp / "data")])
        save_upstream_layout(upcycle(load_model(str(tmp / "dense")), 4, 2, 0.01, 0.02, 0.01, 0), tmp / "moe")
        processor = load_processor(str(tmp / "dense"))
        disc = Discriminator(load_model(str(tmp / "moe")), dropout=0.1).train()
        lines = WarmupLines(tmp / "data" / "warmup_pairwise.jsonl")
        pairs = pairs_of(range(len(lines)))
        optimizer = torch.optim.AdamW(disc.parameters(), lr=1e-4)
        times = []
        for step in range(args.steps):
            batch = pairs[step * args.batch_size : (step + 1) * args.batch_size]
            start = time.perf_counter()
            inputs = render_pairs(processor, lines, batch, 560, sees_images=True)
            scores, balance = disc(inputs, router_aux=True)
            teacher, student = scores.chunk(2)
            (bradley_terry(teacher, student) + 0.01 * balance).backward()
            optimizer.step()
            optimizer.zero_grad()
            times.append(time.perf_counter() - start)
    steady = sorted(times[2:])
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"warmup step ({args.batch_size} pairs = {2 * args.batch_size} sequences, {args.threads} threads): "
        f"median {1000 * steady[len(steady) // 2]:.1f} ms, first {1000 * times[0]:.1f} ms; "
        f"peak RSS {peak_mb:.0f} MB"
    )


if __name__ == "__main__":
    main()
