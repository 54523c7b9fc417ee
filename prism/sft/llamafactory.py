"""Stage 1 on LLaMA-Factory 0.9.5 (integration-reference §6): the training YAML rendered from the config
slice, LLaMA-Factory's training under torchrun over the job's GPUs (one launcher per node through srun on
several nodes), resumed from the last complete checkpoint in the work directory, and exported beside the
manifest, which is written last.

LLaMA-Factory writes `all_results.json` only after its final save, so that file, not the weights, says the
training finished.

torchrun starts prism.sft.llamafactory_rank on every rank rather than `llamafactory-cli train`: the CLI's
`run_exp()` takes no callbacks, and `run_exp(callbacks=...)` is how LLaMA-Factory adds one. Each rank's
memory peak is recorded there and gathered into the manifest.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from prism.core.manifest import MANIFEST, write_manifest
from prism.core.tracking import job_tracking, llamafactory_environment, llamafactory_settings
from prism.core.training import write_curves
from prism.data.prepare import SFT_DATASET

DEEPSPEED_ZERO3 = Path(__file__).with_name("ds_z3.json")
FINISHED = "all_results.json"
# Files of LLaMA-Factory's output directory that are training state, not the model.
NOT_EXPORTED = ("training_args.bin",)
# Every rank's memory peak in the attempt that finished training, written by rank 0 in the work directory.
PEAK_MEMORY = "peak_memory.json"
# What llamafactory-cli's launcher sets for the torchrun ranks it starts (its OPTIM_TORCH default).
LAUNCHER_ENVIRONMENT = {
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    "TORCH_NCCL_AVOID_RECORD_STREAMS": "1",
}


def training_yaml(cfg: dict, model: Path, data: Path, output_dir: Path, resume: Path | None) -> dict:
    """LLaMA-Factory's arguments for full SFT of Qwen3-VL, every hyperparameter from the config slice."""
    engine = cfg["llamafactory"]
    settings = {
        "model_name_or_path": str(model),
        "image_max_pixels": engine["image_max_pixels"],
        "trust_remote_code": True,
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "freeze_vision_tower": cfg["freeze_vision_tower"],
        "freeze_multi_modal_projector": engine["freeze_multi_modal_projector"],
        "freeze_language_model": False,
        "deepspeed": str(DEEPSPEED_ZERO3),
        "dataset": SFT_DATASET,
        "dataset_dir": str(data),
        "media_dir": str(data),  # prepared image paths are relative to the prepared set
        "template": engine["template"],
        # LLaMA-Factory cuts prompt + response to this length together (the paper's "max response length"
        # is read as this cap: prompt, image tokens and response within 8192)
        "cutoff_len": cfg["max_length"],
        "preprocessing_num_workers": engine["preprocessing_workers"],
        "dataloader_num_workers": engine["dataloader_workers"],
        "output_dir": str(output_dir),
        "logging_steps": engine["logging_steps"],
        "save_strategy": "steps",
        "save_steps": engine["save_steps"],
        "save_total_limit": engine["keep_checkpoints"],
        "save_only_model": False,  # optimizer and schedule state too, or a rerun could not resume
        "overwrite_output_dir": False,
        "plot_loss": True,
        "report_to": "none",  # the job's trackers replace it (prism.core.tracking)
        "per_device_train_batch_size": cfg["batch_size"],
        "gradient_accumulation_steps": cfg["grad_accum"],
        "learning_rate": cfg["lr"],
        "num_train_epochs": float(cfg["epochs"]),
        "lr_scheduler_type": cfg["scheduler"],
        "warmup_ratio": cfg["warmup_ratio"],
        "weight_decay": cfg["weight_decay"],
        "bf16": True,
        "seed": cfg["seed"],
        "ddp_timeout": 180000000,
    }
    if resume:
        settings["resume_from_checkpoint"] = str(resume)
    return settings


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest `checkpoint-N` whose trainer_state.json exists: the Trainer writes it after the weights,
    optimizer and RNG state, so a checkpoint cut short by a kill is never resumed from."""
    complete = [
        (int(match.group(1)), path)
        for path in output_dir.glob("checkpoint-*")
        if (match := re.fullmatch(r"checkpoint-(\d+)", path.name)) and (path / "trainer_state.json").is_file()
    ]
    return max(complete)[1] if complete else None


def launch(
    config_file: Path,
    peaks_file: Path,
    nodes: int,
    gpus_per_node: int,
    environ=os.environ,
    datasets_cache: Path | None = None,
) -> tuple[list[str], dict]:
    """torchrun over prism.sft.llamafactory_rank: directly on one node; on several, one launcher per node
    through srun, each taking its rank from SLURM_NODEID and meeting on the first node. The tokenized
    data set (tens of GB for the paper's 1.37M rows) is cached in `datasets_cache`, not in ~/.cache, and a
    rerun finds it there."""
    from prism.cluster.ray_cluster import allocation_nodes, free_port

    env = dict(environ, **LAUNCHER_ENVIRONMENT)
    if datasets_cache is not None:
        env["HF_DATASETS_CACHE"] = str(datasets_cache)
    master = allocation_nodes(environ)[0] if nodes > 1 else "127.0.0.1"
    torchrun = ["torchrun", f"--nnodes={nodes}", f"--nproc_per_node={gpus_per_node}"]
    torchrun += [f"--master_addr={master}", f"--master_port={free_port()}"]
    train = ["-m", "prism.sft.llamafactory_rank", str(config_file), str(peaks_file)]
    if nodes == 1:
        return [*torchrun, "--node_rank=0", *train], env
    per_node = f'exec {" ".join(torchrun)} --node_rank="$SLURM_NODEID" {" ".join(train)}'
    srun = ["srun", "--overlap", f"--nodes={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    return [*srun, "bash", "-c", per_node], env


def curves(trainer_log: Path) -> dict[int, dict]:
    """LLaMA-Factory's per-log-step lines (trainer_log.jsonl) as {step: {loss, lr}}; a step logged again
    after a resume replaces the earlier line."""
    steps: dict[int, dict] = {}
    if trainer_log.is_file():
        for line in trainer_log.read_text().splitlines():
            entry = json.loads(line) if line.strip() else {}
            if "loss" in entry and "current_steps" in entry:
                lr = entry.get("lr", entry.get("learning_rate", ""))
                steps[entry["current_steps"]] = {"loss": entry["loss"], "lr": lr}
    return dict(sorted(steps.items()))


def export(output_dir: Path, out: Path) -> None:
    """The final model, tokenizer, processor and LLaMA-Factory's result files, linked (or copied) into the
    artifact directory; checkpoints stay in the work directory."""
    out.mkdir(parents=True, exist_ok=True)
    for path in output_dir.iterdir():
        if path.is_file() and path.name not in NOT_EXPORTED:
            target = out / path.name
            target.unlink(missing_ok=True)
            try:
                os.link(path, target)
            except OSError:
                shutil.copy2(path, target)


def run(args) -> None:
    cfg, started = args.config, time.time()
    output_dir = (args.work / "llamafactory").resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    resume, config_file = latest_checkpoint(output_dir), args.work / "llamafactory_sft.yaml"
    peaks_file = args.work / PEAK_MEMORY
    if not (output_dir / FINISHED).is_file():
        if resume is None:  # LLaMA-Factory refuses a non-empty output directory without a checkpoint
            shutil.rmtree(output_dir)
            output_dir.mkdir()
        for partial in output_dir.glob("checkpoint-*"):  # saves a kill cut short: never to be picked up
            if not (partial / "trainer_state.json").is_file():
                shutil.rmtree(partial)
        settings = training_yaml(cfg, args.model.resolve(), args.data.resolve(), output_dir, resume)
        tracking = job_tracking(args.tracking, args.work, "sft")
        settings |= llamafactory_settings(tracking)
        config_file.write_text(yaml.safe_dump(settings, sort_keys=False))
        print(f"sft: LLaMA-Factory {'from ' + resume.name if resume else 'from the start'}", flush=True)
        peaks_file.unlink(missing_ok=True)  # an earlier attempt's peaks are not this one's
        command, env = launch(
            config_file, peaks_file, args.nodes, args.gpus_per_node, datasets_cache=args.work / "datasets"
        )
        env |= llamafactory_environment(tracking)
        returncode = subprocess.run(command, env=env).returncode
        if returncode or not (output_dir / FINISHED).is_file():
            saved = latest_checkpoint(output_dir)
            sys.exit(
                f"sft: LLaMA-Factory exited with status {returncode} before writing {FINISHED}; "
                f"last complete checkpoint: {saved.name if saved else 'none'}. Rerun the job to resume "
                f"from there ({output_dir})."
            )
    export(output_dir, args.out)
    steps = curves(output_dir / "trainer_log.jsonl")
    write_curves(steps, args.out / "metrics.csv")
    losses = [row["loss"] for row in steps.values()]
    results = json.loads((output_dir / FINISHED).read_text())
    write_manifest(
        args.out / MANIFEST,
        "sft",
        [Path(d) / MANIFEST for d in args.inputs],
        cfg,
        {
            "steps": max(steps, default=0),
            "resumed_from": resume.name if resume else None,
            "first_loss": losses[0] if losses else None,
            "final_loss": losses[-1] if losses else None,
            "train_loss": results.get("train_loss"),
            "peak_memory": json.loads(peaks_file.read_text()) if peaks_file.is_file() else None,
        },
        started,
        engine={"name": "llamafactory", "arguments": yaml.safe_load(config_file.read_text())},
    )
