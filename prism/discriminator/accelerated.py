"""Warmup state under Hugging Face Accelerate: one process on CPU, or `accelerate launch` with DeepSpeed
ZeRO-2 on the GPUs of one node (method-reference §2.1). The training code is the same in both."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

# Relative to the workflow directory, where jobs run (so the path in params does not depend on the checkout).
DEEPSPEED_CONFIG = "prism/discriminator/ds_zero2.json"


def accelerator_for(engine: str, grad_accum: int):
    from accelerate import Accelerator, DistributedDataParallelKwargs

    # Experts a batch never routes to get no gradient: DDP must not wait for them.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    return Accelerator(cpu=engine == "cpu", gradient_accumulation_steps=grad_accum, kwargs_handlers=[ddp])


def launch_command(gpus: int, grad_accum: int) -> str:
    """The launcher of the `accelerate` engine; the rule runs `<this> -m prism.discriminator warmup ...`."""
    return (
        f"accelerate launch --num_processes {gpus} --num_machines 1 --mixed_precision bf16 --use_deepspeed "
        f"--deepspeed_config_file {DEEPSPEED_CONFIG} --gradient_accumulation_steps {grad_accum}"
    )


class AcceleratedCheckpoint:
    """Model, optimizer and schedule through `accelerator.save_state`, so ZeRO-partitioned optimizer state
    resumes too; written to a temporary directory and renamed by the main process."""

    def __init__(self, accelerator, work_dir: Path, every: int):
        self.accelerator, self.every = accelerator, every
        self.dir, self.tmp = Path(work_dir) / "accelerate_state", Path(work_dir) / "accelerate_state.tmp"

    def load(self, state: dict) -> int:
        if not (self.dir / "step.json").exists():
            return 0
        self.accelerator.load_state(str(self.dir))
        step = json.loads((self.dir / "step.json").read_text())["step"]
        if self.accelerator.is_main_process:
            print(f"resumed from step {step} ({self.dir})", flush=True)
        return step

    def save(self, step: int, state: dict) -> None:
        if step % self.every:
            return
        self.accelerator.save_state(str(self.tmp))
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            (self.tmp / "step.json").write_text(json.dumps({"step": step}))
            shutil.rmtree(self.dir, ignore_errors=True)
            self.tmp.rename(self.dir)
        self.accelerator.wait_for_everyone()
