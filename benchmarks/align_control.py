"""Negative control for the tiny alignment: the same run with the discriminator's verdict reversed.

    python benchmarks/align_control.py --sft SFT_DIR --disc WARM_DIR --align-data ALIGN_DIR \
        --bench BENCH_DIR --out DIR [--set actor_lr=1e-3 ...]

Aligns the tiny SFT policy twice from the tiny config's align settings (config/config.yaml under
config/tiny.yaml, `--set` overriding align keys), once as configured and once with both experts' scores
negated, evaluates both and the SFT policy on the synthetic benchmarks, and prints perception (captions
against the scene) and reasoning (answer accuracy) with 95% bootstrap intervals, the paired differences,
how far each run moved the weights and its alignment curve. If the configured run is not better on
perception than the flipped one, the tiny mode cannot see what the advantage does.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

import prism.align.cpu as align_cpu
from prism.core.config import load_config
from prism.core.training import run_stage
from prism.tables.intervals import difference_interval, mean_interval

ROOT = Path(__file__).resolve().parents[1]


def merged(base: dict, overlay: dict) -> dict:
    out = dict(base)
    for key, value in overlay.items():
        both = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = merged(base[key], value) if both else value
    return out


def tiny_config(overrides: list[str]):
    raw = merged(
        yaml.safe_load((ROOT / "config/config.yaml").read_text()),
        yaml.safe_load((ROOT / "config/tiny.yaml").read_text()),
    )
    for item in overrides:
        key, value = item.split("=", 1)
        raw["align"][key] = json.loads(value)
    return load_config(raw)


def flipped_run(args) -> None:
    """The alignment with the discriminator's verdict reversed: both experts' scores negated before the
    advantage, so the rollouts least like the teacher are pushed up. The format gate is kept (invalid
    responses still sit below every valid one); negating the whole advantage instead rewards breaking
    the format, and the policy stops answering in it within a few steps."""
    original = align_cpu.prism_advantage

    def reversed_verdict(caption, reasoning, valid, group, alpha, format_penalty):
        return original(-caption, -reasoning, valid, group, alpha, format_penalty)

    align_cpu.prism_advantage = reversed_verdict
    try:
        align_cpu.run(args)
    finally:
        align_cpu.prism_advantage = original


def align(name: str, runner, cfg, opts, out: Path) -> Path:
    target = out / "align" / name
    argv = [
        "--config",
        json.dumps(cfg.align.stage_slice()),
        "--model",
        str(opts.sft),
        "--disc",
        str(opts.disc),
    ]
    argv += ["--data", str(opts.align_data), "--out", str(target), "--work", str(out / "work" / name)]
    run_stage(
        "align",
        __doc__,
        ("model", "disc", "data"),
        4,
        {"cpu": runner},
        argv=argv + ["--threads", str(opts.threads)],
    )
    return target


def evaluate(name: str, model: Path, cfg, opts, out: Path) -> dict[str, dict]:
    target = out / "eval" / name
    argv = ["--config", json.dumps(cfg.eval.stage_slice()), "--model", str(model), "--data", str(opts.bench)]
    argv += [
        "--out",
        str(target),
        "--work",
        str(out / "work" / f"eval-{name}"),
        "--threads",
        str(opts.threads),
    ]
    run_stage("eval", __doc__, ("model",), 7, {"cpu": "prism.eval.cpu"}, argv=argv, optional=("data",))
    return {b: json.loads((target / f"{b}.json").read_text())["samples"] for b in cfg.eval.benchmarks}


def moved(model: Path, reference: Path) -> float:
    before, after = load_file(reference / "model.safetensors"), load_file(model / "model.safetensors")
    return max((after[k].float() - before[k].float()).abs().max().item() for k in before)


def curve(run: Path, metric: str) -> str:
    with (run / "metrics.csv").open() as handle:
        values = [float(r[metric]) for r in csv.DictReader(handle) if r.get(metric)]
    return " ".join(f"{v:.2f}" for v in values)


def mean(columns: list[list[float]]) -> float:
    return 100 * sum(sum(c) / len(c) for c in columns) / len(columns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("sft", "disc", "align-data", "bench", "out"):
        parser.add_argument(f"--{name}", required=True, type=Path)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="an align setting")
    parser.add_argument("--threads", type=int, default=1)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    cfg = tiny_config(opts.set)
    print("align:", json.dumps(cfg.align.stage_slice()), flush=True)
    runs = {"prism": align("prism", align_cpu.run, cfg, opts, opts.out)}
    runs["flipped"] = align("flipped", flipped_run, cfg, opts, opts.out)
    samples = {"sft": evaluate("sft", opts.sft, cfg, opts, opts.out)}
    samples |= {name: evaluate(name, run, cfg, opts, opts.out) for name, run in runs.items()}
    print("\narm      perception [95% CI]     reasoning [95% CI]   max |dW| vs SFT")
    for name, per_benchmark in samples.items():
        line = f"{name:8}"
        for measure in ("perception", "acc"):
            columns = [s[measure] for s in per_benchmark.values()]
            low, high = mean_interval(columns)
            line += f" {mean(columns):5.1f} [{low:5.1f}, {high:5.1f}]"
        line += f"   {moved(runs[name], opts.sft):.2e}" if name in runs else "   -"
        print(line)
    for first, second in (("prism", "flipped"), ("prism", "sft"), ("flipped", "sft")):
        for measure in ("perception", "acc"):
            a = [s[measure] for s in samples[first].values()]
            b = [s[measure] for s in samples[second].values()]
            low, high = difference_interval(a, b)
            print(f"{first} - {second} {measure}: {mean(a) - mean(b):+.1f} [{low:+.1f}, {high:+.1f}]")
    for name, run in runs.items():
        for metric in ("perception", "answer_acc", "caption_gap", "reasoning_gap"):
            print(f"{name} curve {metric}: {curve(run, metric)}")


if __name__ == "__main__":
    main()
