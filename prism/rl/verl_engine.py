"""Stage 3 on GPUs: verl 0.9.1's own PPO trainer (`verl.trainer.main_ppo`) with one algorithm's overrides
and our reward function; DAPO and GSPO are core verl features (integration-reference §1.2)."""

from __future__ import annotations

from prism.verl.command import rl_settings
from prism.verl.run import run_verl, trainer_job


def run(args) -> None:
    experiment = "rl-" + "-".join(args.out.parts[-2:])  # rl-<policy>-<init>-<algo>
    settings = rl_settings(args.config, trainer_job(args, experiment))
    run_verl(args, "rl", ["-m", "verl.trainer.main_ppo"], settings, "ppo_trainer")
