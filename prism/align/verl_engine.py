"""Stage 2 on GPUs: our trainer on verl 0.9.1 (`prism.verl.align`), the discriminator in the critic slot."""

from __future__ import annotations

from prism.verl.align import CONFIG_DIR, CONFIG_NAME
from prism.verl.command import align_settings
from prism.verl.run import run_verl, trainer_job


def run(args) -> None:
    settings = align_settings(args.config, trainer_job(args, f"align-{args.out.name}"), args.disc.resolve())
    run_verl(args, "align", ["-m", "prism.verl.align"], settings, CONFIG_NAME, CONFIG_DIR)
