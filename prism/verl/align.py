"""Stage 2 on verl: `python -m prism.verl.align [hydra overrides]` (config `prism_align`).

verl's `main_ppo` with our task runner: the same Ray start-up (`run_ppo`), then `PrismAlignTrainer` in
place of the registered `sync` trainer. verl's trainer modules need TransferQueue, so they are imported
where they run; this module itself imports anywhere, for tests and for the launcher.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import ray
from omegaconf import DictConfig, OmegaConf

from prism.discriminator.model import find_head

CONFIG_DIR = Path(__file__).with_name("config")
CONFIG_NAME = "prism_align"
MODELS_MODULE = "prism.verl.models"


def check_config(config: DictConfig) -> None:
    """Refuse, before any GPU work, a configuration that would train something other than PRISM.

    A headless discriminator must fail here: inside verl, a model class that raises while loading is
    silently replaced by trl's wrapper with a random head (integration-reference §3.2)."""
    if not config.critic.enable:
        raise ValueError("critic.enable must be true: the critic slot holds the discriminator")
    if not (config.trainer.use_v1 and config.trainer.v1.trainer_mode == "sync"):
        raise ValueError(
            "PRISM alignment runs on verl's V1 sync trainer: trainer.use_v1=true, v1.trainer_mode=sync"
        )
    libraries = config.critic.model.external_lib
    if MODELS_MODULE not in ([libraries] if isinstance(libraries, str) else list(libraries or [])):
        raise ValueError(
            f"critic.model.external_lib must include {MODELS_MODULE}, or the head is re-initialised"
        )
    worker_env = OmegaConf.select(config, "ray_kwargs.ray_init.runtime_env.env_vars", default=None) or {}
    if MODELS_MODULE not in str(worker_env.get("VERL_USE_EXTERNAL_MODULES", "")).split(","):
        raise ValueError(
            "ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES must include"
            f" {MODELS_MODULE}: verl imports critic.model.external_lib where it builds the config only,"
            " and a critic worker without our class loads the discriminator with a random head or not at all"
        )
    find_head(Path(config.critic.model.path))


@ray.remote
class PrismTaskRunner:
    """verl's TaskRunnerV1.run with PrismAlignTrainer (verl/trainer/main_ppo.py)."""

    def run(self, config: DictConfig) -> None:
        import transfer_queue as tq
        from verl.trainer.ppo.v1 import AgentLoopManagerTQ
        from verl.utils.logging_utils import configure_verl_logging

        from prism.verl.align_trainer import PrismAlignTrainer

        configure_verl_logging()
        config.transfer_queue.enable = True
        OmegaConf.resolve(config)
        tq.init(config.transfer_queue)
        trainer, succeeded = None, False
        try:
            trainer = PrismAlignTrainer(config=config)
            trainer.init()
            agent_loop_manager = AgentLoopManagerTQ.create(
                config=config,
                llm_client=trainer.get_llm_client(),
                teacher_client=trainer.get_teacher_client(),
                reward_loop_worker_handles=trainer.get_reward_handles(),
            )
            trainer.fit(agent_loop_manager)
            succeeded = True
        finally:
            try:
                tracking = getattr(trainer, "logger", None)
                if tracking is not None:
                    tracking.finish(exit_code=0 if succeeded else 1)
            finally:
                tq.close()


@hydra.main(config_path=str(CONFIG_DIR), config_name=CONFIG_NAME, version_base=None)
def main(config: DictConfig) -> None:
    from verl.trainer.main_ppo import run_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    check_config(config)
    auto_set_device(config)
    validate_config(
        config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config)
    )
    run_ppo(config, task_runner_class=PrismTaskRunner)


if __name__ == "__main__":
    main()
