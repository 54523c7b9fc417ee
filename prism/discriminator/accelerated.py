"""Warmup state under Hugging Face Accelerate: one process on CPU, or `accelerate launch` with DeepSpeed
ZeRO-2 on the GPUs of one node (method-reference §2.1). The training code is the same in both."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from prism.core.tracking import JobTracking, accelerate_settings

DEEPSPEED_CONFIG = Path(__file__).with_name("ds_zero2.json")


def accelerator_for(engine: str, grad_accum: int, pairs_per_process: int, tracking: JobTracking):
    """The Accelerator of one warmup process, logging to `tracking`'s backends. Batches are built by the
    training loop, not a DataLoader, so DeepSpeed's micro batch (left "auto" in ds_zero2.json, which
    `prepare` can resolve only from a DataLoader) is set here: the pairs one process scores per forward."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    # Experts a batch never routes to get no gradient: DDP must not wait for them.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    accelerator = Accelerator(
        cpu=engine == "cpu",
        gradient_accumulation_steps=grad_accum,
        kwargs_handlers=[ddp],
        **accelerate_settings(tracking),
    )
    deepspeed = accelerator.state.deepspeed_plugin
    if deepspeed is not None:
        deepspeed.deepspeed_config["train_micro_batch_size_per_gpu"] = pairs_per_process
    return accelerator


def launch_command(gpus: int, grad_accum: int) -> str:
    """The launcher of the `accelerate` engine; the rule runs `<this> -m prism.discriminator warmup ...`."""
    return (
        f"accelerate launch --num_processes {gpus} --num_machines 1 --mixed_precision bf16 --use_deepspeed "
        f"--deepspeed_config_file {DEEPSPEED_CONFIG} --gradient_accumulation_steps {grad_accum}"
    )


class AcceleratedCheckpoint:
    """Model, optimizer and schedule through `accelerator.save_state`, so ZeRO-partitioned optimizer state
    resumes too. Each save goes to a temporary directory, gets its step.json last and is renamed to
    `accelerate_state-<step>`; the previous one is removed only then, so a crash at any moment leaves the
    last complete state, and a partly written one is never loaded."""

    def __init__(self, accelerator, work_dir: Path, every: int):
        self.accelerator, self.every = accelerator, every
        self.work, self.tmp = Path(work_dir), Path(work_dir) / "accelerate_state.tmp"

    def complete(self) -> list[Path]:
        return sorted(p for p in self.work.glob("accelerate_state-*") if (p / "step.json").exists())

    def load(self, state: dict) -> int:
        saved = self.complete()
        if not saved:
            return 0
        self.accelerator.load_state(str(saved[-1]))
        step = json.loads((saved[-1] / "step.json").read_text())["step"]
        if self.accelerator.is_main_process:
            print(f"resumed from step {step} ({saved[-1]})", flush=True)
        return step

    def save(self, step: int, state: dict) -> None:
        if step % self.every:
            return
        if self.accelerator.is_main_process:
            shutil.rmtree(self.tmp, ignore_errors=True)  # a save cut short by a crash
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(self.tmp))
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            (self.tmp / "step.json").write_text(json.dumps({"step": step}))
            self.tmp.rename(self.work / f"accelerate_state-{step:08d}")
            for older in self.complete()[:-1]:
                shutil.rmtree(older)
        self.accelerator.wait_for_everyone()
