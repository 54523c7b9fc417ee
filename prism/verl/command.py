"""verl 0.9.1 command lines of Stages 2 and 3, rendered from our config slices.

Every override is a key of verl 0.9.1's own config tree (or a `+` key verl reads), never one of the legacy
keys it composes but silently ignores (integration-reference §0.3, §2): `IGNORED_BY_VERL` lists them, and
the tests compose each command against verl's config to prove both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

REWARD_FUNCTION = "pkg://prism.verl.reward"
# Keys verl 0.9.1 accepts but does not act on: legacy reward keys (main_ppo ignores them), the actor's
# grad_clip (the FSDP engine reads optim.clip_grad), the V1 trainer's ignored DAPO knob, the actor's
# freeze_vision_tower (declared, read nowhere), and the critic's batching keys: the V1 trainer sizes the
# critic engine's training and inference micro-batches from critic.ppo_infer_max_token_len_per_gpu alone.
IGNORED_BY_VERL = (
    "custom_reward_function.",
    "reward_model.",
    "actor_rollout_ref.actor.grad_clip",
    "actor_rollout_ref.actor.freeze_vision_tower",
    "critic.grad_clip",
    "critic.ppo_max_token_len_per_gpu",
    "critic.forward_max_token_len_per_gpu",
    "critic.ppo_micro_batch_size_per_gpu",
    "critic.use_dynamic_bsz",
    "algorithm.filter_groups.max_num_gen_batches",
    "data.gen_batch_size",
)
# Variables every Ray process of a run gets (the TaskRunner actor and each worker): verl forwards only a
# fixed list of its own, and on a cluster started by `ray start` the driver's environment reaches none.
RAY_ENV = "+ray_kwargs.ray_init.runtime_env.env_vars."


@dataclass(frozen=True)
class TrainerJob:
    """Where one verl run reads and writes (absolute paths: verl runs in the work directory), the shape of
    the allocation it runs on, and the trackers it logs its steps to besides its console and step file
    (config `tracking`; their directories travel in the Ray job's environment: prism.verl.run)."""

    model: Path
    data: Path
    checkpoints: Path
    experiment: str
    nodes: int
    gpus_per_node: int
    trackers: tuple[str, ...] = ("tensorboard",)
    project: str = "prism"


def hydra_value(value) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    return str(value)


def as_overrides(settings: dict) -> list[str]:
    return [f"{key}={hydra_value(value)}" for key, value in settings.items()]


def policy_settings(cfg: dict, job: TrainerJob, lr: float, weight_decay: float) -> dict:
    """What alignment and RLVR share: data, actor, rollout and KL settings (method-reference §3.7, §4.1)."""
    verl = cfg["verl"]
    train_file = job.data / "train.parquet"
    settings = {
        "data.train_files": train_file,
        # Validation is the evaluation stage's job: verl only needs a readable set here.
        "data.val_files": train_file,
        "data.prompt_key": "prompt",
        "data.image_key": "images",
        "data.image_patch_size": 16,  # Qwen3-VL; verl's default 14 would misjudge prompt lengths
        "data.train_batch_size": cfg["prompts_per_step"],
        "data.max_prompt_length": cfg["max_prompt_length"],
        "data.max_response_length": cfg["max_response_length"],
        "data.filter_overlong_prompts": True,
        "data.truncation": "error",  # over-long prompts are filtered first: truncating one would be a bug
        "data.seed": cfg["seed"],
        "actor_rollout_ref.model.path": job.model,
        "actor_rollout_ref.model.use_remove_padding": True,
        "actor_rollout_ref.model.enable_gradient_checkpointing": verl["gradient_checkpointing"],
        "actor_rollout_ref.actor.strategy": verl["strategy"],
        "actor_rollout_ref.actor.optim.lr": lr,
        "actor_rollout_ref.actor.optim.weight_decay": weight_decay,
        "actor_rollout_ref.actor.optim.clip_grad": cfg["grad_clip"],
        "actor_rollout_ref.actor.ppo_mini_batch_size": cfg["prompts_per_step"],  # one update per step
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": 1,
        "actor_rollout_ref.actor.use_dynamic_bsz": True,
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu": verl["ppo_max_token_len_per_gpu"],
        "actor_rollout_ref.actor.entropy_coeff": 0,
        "actor_rollout_ref.actor.fsdp_config.param_offload": verl["offload"],
        "actor_rollout_ref.actor.fsdp_config.optimizer_offload": verl["offload"],
        "actor_rollout_ref.rollout.name": "vllm",
        "actor_rollout_ref.rollout.n": cfg["rollouts_per_prompt"],
        "actor_rollout_ref.rollout.temperature": cfg["temperature"],
        "actor_rollout_ref.rollout.tensor_model_parallel_size": verl["rollout_tensor_parallel"],
        "actor_rollout_ref.rollout.gpu_memory_utilization": verl["rollout_gpu_memory_utilization"],
        "actor_rollout_ref.rollout.max_num_batched_tokens": verl["max_num_batched_tokens"],
        # unset, verl 0.9.1 gives vLLM the model's whole context (262144 for Qwen3-VL), whose KV cache
        # for one request does not fit the memory the rollout is given
        "actor_rollout_ref.rollout.max_model_len": cfg["max_prompt_length"] + cfg["max_response_length"],
        "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz": True,
        "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu": verl["log_prob_max_token_len_per_gpu"],
        "algorithm.adv_estimator": "grpo",
        "algorithm.use_kl_in_reward": False,
    }
    return settings | kl_settings(cfg["kl_coef"], verl)


def kl_settings(kl_coef: float, verl: dict) -> dict:
    """KL is off in the authors' scripts; a positive kl_coef turns on verl's KL loss against a reference."""
    if kl_coef == 0:
        return {"actor_rollout_ref.actor.use_kl_loss": False}
    return {
        "actor_rollout_ref.actor.use_kl_loss": True,
        "actor_rollout_ref.actor.kl_loss_coef": kl_coef,
        "actor_rollout_ref.actor.kl_loss_type": "low_var_kl",
        "actor_rollout_ref.ref.fsdp_config.param_offload": verl["offload"],
        "actor_rollout_ref.ref.log_prob_use_dynamic_bsz": True,
        "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu": verl["log_prob_max_token_len_per_gpu"],
    }


def trainer_settings(cfg: dict, job: TrainerJob) -> dict:
    """Cluster shape, schedule, logging, and checkpoints that a rerun resumes from."""
    verl = cfg["verl"]
    return {
        "trainer.nnodes": job.nodes,
        "trainer.n_gpus_per_node": job.gpus_per_node,
        "trainer.total_training_steps": cfg["steps"],
        "trainer.total_epochs": cfg["steps"],  # an upper bound: the step count ends training
        "trainer.project_name": job.project,
        "trainer.experiment_name": job.experiment,
        "trainer.logger": ["console", "file", *job.trackers],
        "trainer.val_before_train": False,
        "trainer.test_freq": -1,
        "trainer.save_freq": verl["save_freq"],
        "trainer.resume_mode": "auto",
        "trainer.default_local_dir": job.checkpoints,
        "trainer.max_actor_ckpt_to_keep": verl["keep_checkpoints"],
        "trainer.max_critic_ckpt_to_keep": verl["keep_checkpoints"],
    }


def rl_settings(cfg: dict, job: TrainerJob) -> dict:
    """Stage 3 with one algorithm (method-reference §4.2); cfg is the rule's slice (`rl_slice`)."""
    algo = cfg["algorithm"]
    verl = cfg["verl"] | {
        key: algo[key]
        for key in ("ppo_max_token_len_per_gpu", "log_prob_max_token_len_per_gpu")
        if algo.get(key) is not None
    }
    cfg = cfg | {"verl": verl}
    settings = policy_settings(cfg, job, cfg["lr"], algo["weight_decay"])
    settings |= {
        "actor_rollout_ref.actor.optim.lr_warmup_steps": algo["lr_warmup_steps"],
        "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio": algo["lr_warmup_steps_ratio"],
        "actor_rollout_ref.actor.policy_loss.loss_mode": algo["loss_mode"],
        "actor_rollout_ref.actor.loss_agg_mode": algo["loss_agg_mode"],
        "actor_rollout_ref.actor.clip_ratio_low": algo["clip_ratio_low"],
        "actor_rollout_ref.actor.clip_ratio_high": algo["clip_ratio_high"],
        "actor_rollout_ref.actor.clip_ratio_c": algo["clip_ratio_c"],
        "algorithm.norm_adv_by_std_in_grpo": True,
        "critic.enable": False,  # GRPO has no value model
        "reward.custom_reward_function.path": REWARD_FUNCTION,
        "reward.custom_reward_function.name": "compute_score",
        "+reward.custom_reward_function.reward_kwargs.accuracy_weight": cfg["accuracy_weight"],
        "+reward.custom_reward_function.reward_kwargs.format_weight": cfg["format_weight"],
    }
    settings |= dynamic_sampling_settings(algo["dynamic_sampling"], cfg["prompts_per_step"])
    settings |= overlong_settings(algo["overlong_buffer"], cfg["max_response_length"])
    return settings | trainer_settings(cfg, job)


def dynamic_sampling_settings(dynamic: dict, prompts_per_step: int) -> dict:
    """DAPO's group filter on accuracy. verl's V1 trainer refills prompts until the batch is full, with
    at most `gen_prompts_per_step` prompts in flight (the authors generate 96 for 32 at a time)."""
    if not dynamic["enable"]:
        return {"algorithm.filter_groups.enable": False}
    return {
        "algorithm.filter_groups.enable": True,
        "algorithm.filter_groups.metric": "acc",
        "algorithm.filter_groups.max_inflight_gen_batches": math.ceil(
            dynamic["gen_prompts_per_step"] / prompts_per_step
        ),
    }


def overlong_settings(buffer: dict, max_response_length: int) -> dict:
    """DAPO's soft overlong penalty lives in verl's `dapo` reward manager; without it, `naive` scores."""
    if not buffer["enable"]:
        return {"reward.reward_manager.name": "naive"}
    return {
        "reward.reward_manager.name": "dapo",
        "+reward.reward_kwargs.overlong_buffer_cfg.enable": True,
        "+reward.reward_kwargs.overlong_buffer_cfg.len": buffer["length"],
        "+reward.reward_kwargs.overlong_buffer_cfg.penalty_factor": buffer["penalty_factor"],
        "+reward.reward_kwargs.overlong_buffer_cfg.log": False,
        "+reward.reward_kwargs.max_resp_len": max_response_length,
    }


def align_settings(cfg: dict, job: TrainerJob, discriminator: Path) -> dict:
    """Stage 2 on our trainer (`prism.verl.align`, config `prism_align`): the policy as in §3.7, the
    warmed discriminator in the critic slot, and PRISM's own settings in the `prism` block."""
    verl = cfg["verl"]
    settings = policy_settings(cfg, job, cfg["actor_lr"], cfg["weight_decay"])
    settings |= {
        "actor_rollout_ref.actor.clip_ratio_low": cfg["clip_ratio"],
        "actor_rollout_ref.actor.clip_ratio_high": cfg["clip_ratio"],
        "actor_rollout_ref.actor.loss_agg_mode": "token-mean",
        "critic.model.path": discriminator,
        "critic.model.use_remove_padding": True,
        "critic.model.enable_gradient_checkpointing": verl["gradient_checkpointing"],
        "critic.strategy": verl["strategy"],
        "critic.optim.lr": cfg["disc_lr"],
        "critic.optim.weight_decay": cfg["weight_decay"],
        "critic.optim.clip_grad": cfg["grad_clip"],
        # the token budget of the discriminator's scoring and update micro-batches (dynamic batching is
        # the critic engine's default)
        "+critic.ppo_infer_max_token_len_per_gpu": verl["ppo_max_token_len_per_gpu"],
        "critic.fsdp.param_offload": verl["offload"],
        "critic.fsdp.optimizer_offload": verl["offload"],
        "trainer.critic_warmup": 0,  # the discriminator was warmed before: the actor trains from step 1
        "prism.alpha": cfg["alpha"],
        "prism.format_penalty": cfg["format_penalty"],
        "prism.score_clip": cfg["score_clip"],
        "prism.score_reg_coef": cfg["score_reg_coef"],
    }
    return settings | trainer_settings(cfg, job)
