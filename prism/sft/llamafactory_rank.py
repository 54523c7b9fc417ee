"""What torchrun runs on each rank of the llamafactory SFT engine: LLaMA-Factory's `run_exp`, the function
`llamafactory-cli train` runs, with a Trainer callback that records the ranks' memory peaks.

`python -m prism.sft.llamafactory_rank CONFIG_YAML PEAKS_JSON`
"""

from __future__ import annotations

import sys
from pathlib import Path

from transformers import TrainerCallback

from prism.core.manifest import peak_memory, peak_memory_per_rank, write_json_atomic


class RankPeakMemory(TrainerCallback):
    """At the end of training every rank's memory peak (prism.core.manifest.peak_memory: GPU memory
    allocated where CUDA ran, else the host's peak RSS), gathered over the process group in rank order
    and written by the first rank."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_end(self, args, state, control, **kwargs):
        import torch.distributed as dist

        peaks = [peak_memory()]
        if dist.is_available() and dist.is_initialized():
            mine, peaks = peaks[0], [None] * dist.get_world_size()
            dist.all_gather_object(peaks, mine)
        if state.is_world_process_zero:
            write_json_atomic(self.path, peak_memory_per_rank(peaks))


def train_rank(config_file: Path, peaks_file: Path) -> None:
    """One torchrun rank: LLaMA-Factory's `train` on the YAML, read from the command line as its CLI
    reads it, with RankPeakMemory among the Trainer's callbacks."""
    from llamafactory.train.tuner import run_exp

    sys.argv = [sys.argv[0], str(config_file)]
    run_exp(callbacks=[RankPeakMemory(peaks_file)])


if __name__ == "__main__":
    train_rank(Path(sys.argv[1]), Path(sys.argv[2]))
