"""Fetch, build or prepare one input artifact: `python -m prism.data {model,dataset,benchmarks,prepare} ...`.

A `hf` source downloads a Hugging Face repo (token from the environment or the login cache, never from
the command line); `tiny` / `synthetic` sources build offline; `prepare` checks a fetched data set row by
row and writes what its stage reads (prism/data/prepare.py). The manifest is written last.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from prism.core.config import parse_slice
from prism.core.manifest import MANIFEST, write_manifest
from prism.core.prompts import SYSTEM_PROMPT, prompt_messages
from prism.data import synthetic
from prism.data.formats import DATA_SOURCE
from prism.data.prepare import register_sft

DATASETS = ("sft", "warmup", "align", "rl")


def download(hf: dict, out: Path, repo_type: str) -> dict:
    from huggingface_hub import HfApi, snapshot_download

    repos = [hf["repo"], *hf.get("extra_repos", [])]
    files, commits = {}, {}
    for repo in repos:
        target = out if len(repos) == 1 else out / repo.split("/")[-1]
        # Asked first because snapshot_download, when the Hub is unreachable, returns whatever an
        # interrupted attempt left in local_dir as if it were complete.
        commits[repo] = HfApi().repo_info(repo, repo_type=repo_type, revision=hf.get("revision", "main")).sha
        snapshot_download(
            repo,
            repo_type=repo_type,
            revision=commits[repo],
            allow_patterns=hf.get("files") or None,
            local_dir=target,
        )
        files[repo] = {
            str(p.relative_to(out)): p.stat().st_size
            for p in sorted(target.rglob("*"))
            if p.is_file() and p.name != MANIFEST and ".cache" not in p.relative_to(out).parts
        }
    return {"repos": repos, "revision": hf.get("revision", "main"), "commits": commits, "files": files}


def check_discriminator(path: Path) -> list[int]:
    """A discriminator must carry a value head that fits its backbone; otherwise no manifest is written."""
    from prism.discriminator.model import DiscriminatorError, find_head

    try:
        head = find_head(path)
    except DiscriminatorError as err:
        sys.exit(str(err))
    config = json.loads((path / "config.json").read_text())
    hidden = config.get("text_config", config)["hidden_size"]
    if tuple(head.shape) != (1, hidden):
        sys.exit(f"{path}: value head of shape {tuple(head.shape)} does not fit hidden size {hidden}")
    return list(head.shape)


POLICY_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json")


def check_policy(path: Path) -> dict:
    """A downloaded policy must be a complete Qwen3-VL checkpoint: config, every weight shard, tokenizer
    and processor; otherwise no manifest is written and the stages never see it."""
    missing = [name for name in POLICY_FILES if not (path / name).is_file()]
    if missing:
        sys.exit(f"{path}: not a complete checkpoint, missing {missing}")
    model_type = json.loads((path / "config.json").read_text()).get("model_type", "")
    if not model_type.startswith("qwen3_vl"):
        sys.exit(f"{path}: model_type {model_type!r} is not a Qwen3-VL model")
    index = path / "model.safetensors.index.json"
    shards = (
        sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if index.is_file()
        else ["model.safetensors"]
    )
    absent = [shard for shard in shards if not (path / shard).is_file()]
    if absent:
        sys.exit(f"{path}: weight files {absent} are missing; rerun to finish the download")
    return {"model_type": model_type, "weight_bytes": sum((path / shard).stat().st_size for shard in shards)}


def verl_row(example: synthetic.Example, index: int, split: str) -> dict:
    return {
        "prompt": prompt_messages(example.question),
        "images": [{"bytes": synthetic.png_bytes(example.scene.image())}],
        "data_source": DATA_SOURCE,
        "ability": example.kind,
        "reward_model": {"style": "rule", "ground_truth": example.answer},
        # the scene's truth, so rollouts' captions can be scored against what the image shows
        "extra_info": {
            "split": split,
            "index": index,
            "question": example.question,
            "scene": example.scene.truth(),
            "level": example.scene.level,
        },
    }


def write_sft(examples: list[synthetic.Example], out: Path) -> None:
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i, ex in enumerate(examples):
        image = f"images/{i:06d}.png"
        ex.scene.image().save(out / image)
        records.append(
            {
                "messages": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": f"<image>{ex.question}"},
                    {"role": "assistant", "content": ex.teacher_response()},
                ],
                "images": [image],
            }
        )
    (out / "sft.json").write_text(json.dumps(records))
    register_sft(out, "sft.json")


def write_warmup(examples: list[synthetic.Example], out: Path, seed: int) -> None:
    rng = random.Random(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, ex in enumerate(examples):
        image = f"images/{i:06d}.png"
        ex.scene.image().save(out / image)
        response = ex.teacher_response()
        caption_end = response.index("</caption>") + len("</caption>")
        student_caption, student_cot = synthetic.corrupt(ex, rng)
        lines.append(
            json.dumps(
                {
                    "prompt": ex.question,
                    "image": image,
                    "teacher_caption": response[:caption_end],
                    "teacher_cot": response[caption_end:].strip(),
                    "student_caption": student_caption,
                    "student_cot": student_cot,
                }
            )
        )
    (out / "warmup_pairwise.jsonl").write_text("\n".join(lines) + "\n")


def write_parquet(rows: list[dict], path: Path) -> None:
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path)


def build_dataset(name: str, spec: dict, out: Path) -> dict:
    examples = synthetic.examples(spec["examples"], spec["seed"])
    parts = spec.get("parts") or []
    if name == "sft" and parts:  # one folder per part, as a set fetched from several repos
        for k, part in enumerate(parts):
            write_sft(examples[k :: len(parts)], out / part)
    elif name == "sft":
        write_sft(examples, out)
    elif name == "warmup":
        write_warmup(examples, out, spec["seed"])
    elif name == "rl":
        write_parquet([verl_row(ex, i, "train") for i, ex in enumerate(examples)], out / "train.parquet")
    elif name == "align":
        rows = []
        for i, ex in enumerate(examples):
            response = ex.teacher_response()
            caption_end = response.index("</caption>") + len("</caption>")
            rows.append(
                {
                    **verl_row(ex, i, "train"),
                    "teacher_caption": response[:caption_end],
                    "teacher_cot": response[caption_end:].strip(),
                }
            )
        write_parquet(rows, out / "train.parquet")
    else:
        raise ValueError(f"unknown dataset {name!r}")
    return {"examples": len(examples)}


def build_benchmarks(spec: dict, out: Path) -> dict:
    counts = {}
    for offset, (benchmark, kinds) in enumerate(synthetic.BENCHMARK_QUESTIONS.items()):
        examples = synthetic.graded_examples(spec["examples"], spec["seed"] + 1000 * (offset + 1), kinds)
        rows = [verl_row(ex, i, "test") for i, ex in enumerate(examples)]
        write_parquet(rows, out / f"{benchmark}.parquet")
        counts[benchmark] = len(rows)
    return {"examples": counts}


def checked_spec(args) -> dict:
    """The --config slice, validated as the config file's own block for this artifact."""
    from pydantic import ValidationError

    from prism.core.config import Dataset, Model, SftDataset

    if args.kind in ("dataset", "prepare") and args.name not in DATASETS:
        sys.exit(f"python -m prism.data: unknown dataset {args.name!r}; one of {', '.join(DATASETS)}")
    spec = parse_slice(args.config)
    if args.kind == "prepare":
        return spec
    try:
        block = Model if args.kind == "model" else SftDataset if args.name == "sft" else Dataset
        block.model_validate(spec)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'top level'}: {e['msg'].removeprefix('Value error, ')}"
            for e in err.errors()
        )
        sys.exit(f"python -m prism.data {args.kind} {args.name}: invalid --config ({problems})")
    return spec


def download_or_explain(hf: dict, out: Path, repo_type: str) -> dict:
    """A failed download stops with what to do; files already fetched stay for the rerun to resume."""
    from httpx import HTTPError  # the Hub unreachable, or a connection dropped mid-file
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError

    try:
        return download(hf, out, repo_type)
    except GatedRepoError:
        sys.exit(
            f"download of {hf['repo']} refused: the repo is gated. Accept its licence on huggingface.co, "
            "then set HF_TOKEN or run `hf auth login`; mark it hf.gated in the config so preflight checks it."
        )
    except (HfHubHTTPError, LocalEntryNotFoundError, HTTPError, OSError) as err:
        sys.exit(
            f"download of {hf['repo']} (revision {hf.get('revision', 'main')}) into {out} failed: "
            f"{type(err).__name__}: {str(err).splitlines()[0]}. No manifest was written; check the repo id, "
            "the network and HF_HUB_OFFLINE, then rerun: the files already there are reused."
        )


def prepare_dataset(args, spec: dict, out: Path, started: float) -> None:
    from prism.core.errors import InputError
    from prism.data.prepare import prepare

    if not args.raw:
        sys.exit("python -m prism.data prepare: --raw DIR is required")
    raw = Path(args.raw)
    settings = parse_slice(args.settings)
    if "max_rejected_fraction" not in settings:
        sys.exit('python -m prism.data prepare: --settings needs {"max_rejected_fraction": F}')
    try:
        report = prepare(args.name, raw, out, settings["max_rejected_fraction"], spec)
    except InputError as err:
        sys.exit(f"preparing {args.name} from {raw} failed, no manifest written: {err}")
    rejected = report["read"] - report["kept"]
    print(f"{args.name}: kept {report['kept']} of {report['read']} rows", flush=True)
    for reason, count in report["rejected"].items():
        print(f"  rejected {count}: {reason} (first at {report['first_rejected_at'][reason]})", flush=True)
    if not rejected:
        print("  none rejected", flush=True)
    write_manifest(out / MANIFEST, f"prepare:{args.name}", [raw / MANIFEST], spec, report, started, settings)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m prism.data", description=__doc__)
    parser.add_argument("kind", choices=["model", "dataset", "benchmarks", "prepare"])
    parser.add_argument("--name", required=True)
    parser.add_argument("--config", required=True, help="the rule's config slice, JSON")
    parser.add_argument("--out", required=True, help="artifact directory; its manifest.json is written last")
    parser.add_argument(
        "--expect",
        choices=["policy", "discriminator"],
        default="policy",
        help="what a downloaded model must be: a whole Qwen3-VL checkpoint; a discriminator has a value head",
    )
    parser.add_argument("--raw", help="prepare: the fetched data set's directory")
    parser.add_argument(
        "--settings", default="{}", help="prepare: what changes no result (max_rejected_fraction), JSON"
    )
    args = parser.parse_args(argv)
    spec, out, started = checked_spec(args), Path(args.out), time.time()
    out.mkdir(parents=True, exist_ok=True)
    if args.kind == "prepare":
        return prepare_dataset(args, spec, out, started)
    if spec["source"] == "hf":
        facts = download_or_explain(spec["hf"], out, "model" if args.kind == "model" else "dataset")
    elif args.kind == "model":
        from prism.core.config import TinyModel
        from prism.data import tiny

        facts = tiny.build(TinyModel(**spec["tiny"]), out)
    elif args.kind == "benchmarks":
        facts = build_benchmarks(spec["synthetic"], out)
    else:
        facts = build_dataset(args.name, spec["synthetic"], out)
    if args.expect == "discriminator":
        facts["value_head"] = check_discriminator(out)
    elif spec["source"] == "hf" and args.kind == "model":
        facts["checkpoint"] = check_policy(out)
    write_manifest(out / MANIFEST, f"{args.kind}:{args.name}", [], spec, metrics=facts, started=started)
    print(json.dumps(facts))


if __name__ == "__main__":
    main()
