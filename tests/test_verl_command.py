"""verl 0.9.1 commands rendered from config: every setting of method-reference §3.7 (alignment) and
§4.1-4.2 (RLVR) reaches the config verl composes, verl's own checks accept it, no key verl ignores is
used, and one algorithm's edit changes only its command."""

import copy
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from prism.core.config import load_config
from prism.verl import align
from prism.verl.command import (
    IGNORED_BY_VERL,
    TrainerJob,
    align_settings,
    as_overrides,
    rl_settings,
)
from prism.verl.run import compose

JOB = TrainerJob(
    model=Path("/ckpt/sft"),
    data=Path("/data/rl"),
    checkpoints=Path("/work/rl/ckpt"),
    experiment="rl-qwen3-vl-4b-prism-dapo",
    nodes=2,
    gpus_per_node=8,
)

# loss mode, loss aggregation, clip low / high / c, weight decay, lr warmup, group filter, reward manager
PUBLISHED = {
    "grpo": ("vanilla", "token-mean", 0.2, 0.2, 3.0, 0.01, 0, False, "naive"),
    "dapo": ("vanilla", "token-mean", 0.2, 0.28, 10.0, 0.1, 10, True, "dapo"),
    "gspo": ("gspo", "seq-mean-token-mean", 3e-4, 4e-4, 3.0, 0.1, 0, False, "naive"),
}


def rl_overrides(raw: dict, algo: str) -> list[str]:
    return as_overrides(rl_settings(load_config(raw).rl.job_slice(algo), JOB))


def align_overrides(raw: dict, job: TrainerJob, discriminator: Path) -> list[str]:
    return as_overrides(align_settings(load_config(raw).align.stage_slice(), job, discriminator))


def used_keys(overrides: list[str]) -> list[str]:
    return [override.split("=", 1)[0].lstrip("+") for override in overrides]


def validate(config) -> None:
    """verl's own checks, run by its entry point before anything starts (batch divisibility and the like)."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    validate_config(
        config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config)
    )


@pytest.mark.parametrize("algo", PUBLISHED)
def test_verl_runs_each_algorithm_as_published(paper_config, algo):
    loss_mode, agg, low, high, clip_c, decay, warmup, group_filter, manager = PUBLISHED[algo]
    config = compose(rl_overrides(paper_config, algo))
    actor, rollout = config.actor_rollout_ref.actor, config.actor_rollout_ref.rollout
    assert (actor.policy_loss.loss_mode, actor.loss_agg_mode) == (loss_mode, agg)
    assert (actor.clip_ratio_low, actor.clip_ratio_high, actor.clip_ratio_c) == (low, high, clip_c)
    assert (actor.optim.lr, actor.optim.weight_decay, actor.optim.lr_warmup_steps) == (1e-6, decay, warmup)
    assert actor.optim.lr_warmup_steps_ratio == (0.05 if algo == "gspo" else 0.0)  # 75 of 1500 steps
    assert actor.optim.clip_grad == 1.0 and actor.ppo_mini_batch_size == 32
    assert not actor.use_kl_loss and not config.algorithm.use_kl_in_reward
    assert (config.data.train_batch_size, rollout.n, rollout.temperature) == (32, 16, 1.0)
    assert (config.data.max_prompt_length, config.data.max_response_length) == (2048, 8192)
    assert config.data.image_patch_size == 16
    assert config.algorithm.adv_estimator == "grpo" and config.algorithm.norm_adv_by_std_in_grpo
    assert config.algorithm.filter_groups.enable is group_filter
    assert config.reward.reward_manager.name == manager
    assert config.reward.custom_reward_function.path == "pkg://prism.verl.reward"
    assert dict(config.reward.custom_reward_function.reward_kwargs) == {
        "accuracy_weight": 0.8,
        "format_weight": 0.2,
    }
    assert (config.trainer.total_training_steps, config.trainer.nnodes, config.trainer.n_gpus_per_node) == (
        1500,
        2,
        8,
    )
    assert config.trainer.resume_mode == "auto" and config.trainer.default_local_dir == str(JOB.checkpoints)


def test_dapo_filters_groups_on_accuracy_and_penalises_overlong_responses(paper_config):
    config = compose(rl_overrides(paper_config, "dapo"))
    assert config.algorithm.filter_groups.metric == "acc"
    assert config.algorithm.filter_groups.max_inflight_gen_batches == 3  # 96 prompts for 32 at a time
    overlong = config.reward.reward_kwargs.overlong_buffer_cfg
    assert (overlong.enable, overlong.len, overlong.penalty_factor) == (True, 4096, 1.0)
    assert config.reward.reward_kwargs.max_resp_len == 8192


def test_gspo_raises_the_token_budgets_as_its_script_does(paper_config):
    config = compose(rl_overrides(paper_config, "gspo"))
    assert config.actor_rollout_ref.actor.ppo_max_token_len_per_gpu == 20480
    assert config.actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu == 30720


def test_verl_accepts_the_rl_config(paper_config):
    for algo in PUBLISHED:
        validate(compose(rl_overrides(paper_config, algo)))


@pytest.mark.parametrize("algo", PUBLISHED)
def test_no_key_that_verl_ignores(paper_config, algo):
    assert not [k for k in used_keys(rl_overrides(paper_config, algo)) if k.startswith(IGNORED_BY_VERL)]


def test_a_positive_kl_coef_turns_on_verls_kl_loss(paper_config):
    raw = copy.deepcopy(paper_config)
    raw["rl"]["kl_coef"] = 0.001
    actor = compose(rl_overrides(raw, "grpo")).actor_rollout_ref.actor
    assert actor.use_kl_loss and actor.kl_loss_coef == 0.001 and actor.kl_loss_type == "low_var_kl"


def test_editing_one_algorithm_changes_only_its_command(paper_config):
    edited = copy.deepcopy(paper_config)
    edited["rl"]["algorithm"]["dapo"]["clip_ratio_high"] = 0.3
    changed = {algo for algo in PUBLISHED if rl_overrides(paper_config, algo) != rl_overrides(edited, algo)}
    assert changed == {"dapo"}


# verl's AutoProcessor wants a video processor, which the tiny model's image-only processor lacks.
@pytest.mark.filterwarnings("ignore:Failed to create processor")
def test_alignment_runs_as_the_authors_script_on_our_trainer(paper_config, tiny_dir, disc_dir):
    job = TrainerJob(tiny_dir, Path("/data/align"), Path("/work/align/ckpt"), "align-qwen3-vl-4b", 1, 8)
    overrides = align_overrides(paper_config, job, disc_dir)
    config = compose(overrides, align.CONFIG_NAME, align.CONFIG_DIR)
    actor, rollout, critic = config.actor_rollout_ref.actor, config.actor_rollout_ref.rollout, config.critic
    assert (config.data.train_batch_size, rollout.n, rollout.temperature) == (4, 16, 1.0)
    assert (config.data.max_prompt_length, config.data.max_response_length) == (2048, 6144)
    assert (actor.optim.lr, actor.clip_ratio_low, actor.clip_ratio_high, actor.ppo_mini_batch_size) == (
        1e-6,
        0.2,
        0.2,
        4,
    )
    assert not actor.use_kl_loss and actor.fsdp_config.param_offload and actor.fsdp_config.optimizer_offload
    assert (rollout.gpu_memory_utilization, rollout.max_num_batched_tokens) == (0.25, 8192)
    assert (
        critic.enable
        and critic.model.path == str(disc_dir)
        and critic.model.external_lib == "prism.verl.models"
    )
    assert (critic.optim.lr, critic.ppo_infer_max_token_len_per_gpu, critic.fsdp.param_offload) == (
        1e-6,
        8192,
        True,
    )
    assert rollout.max_model_len == 2048 + 6144
    assert config.trainer.critic_warmup == 0 and config.trainer.total_training_steps == 500
    assert dict(config.prism) == {
        "alpha": 0.5,
        "format_penalty": 1.5,
        "score_clip": 10.0,
        "score_reg_coef": 0.001,
        "teacher_caption_field": "teacher_caption",
        "teacher_reasoning_field": "teacher_cot",
    }
    assert not [k for k in used_keys(overrides) if k.startswith(IGNORED_BY_VERL)]
    align.check_config(config)
    validate(config)


# The sections verl's workers receive as dataclasses (built with omega_conf_to_dataclass), by key prefix.
# (The reference's section is renamed by the worker before it becomes one; KL is off in the paper.)
WORKER_SECTIONS = (
    "actor_rollout_ref.actor",
    "actor_rollout_ref.rollout",
    "actor_rollout_ref.model",
    "critic",
    "algorithm",
)


def worker_dataclasses(config) -> dict:
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.config import HFModelConfig

    built = {
        section: omega_conf_to_dataclass(OmegaConf.select(config, section))
        for section in WORKER_SECTIONS
        if section != "actor_rollout_ref.model" and (section != "critic" or config.critic.enable)
    }
    built["actor_rollout_ref.model"] = omega_conf_to_dataclass(
        config.actor_rollout_ref.model, dataclass_type=HFModelConfig
    )
    return built


def unread_fields(overrides: list[str], built: dict) -> list[str]:
    """Override keys in a worker section that name no field of the dataclass verl builds from it."""
    unread = []
    for key in used_keys(overrides):
        section = next((s for s in WORKER_SECTIONS if key.startswith(s + ".")), None)
        if section is None or section not in built:
            continue
        node = built[section]
        for part in key.removeprefix(section + ".").split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif hasattr(node, part):
                node = getattr(node, part)
            else:
                unread.append(key)
                break
    return unread


@pytest.mark.parametrize("algo", PUBLISHED)
def test_rl_overrides_are_fields_of_what_verls_workers_read(paper_config, tiny_dir, algo):
    job = TrainerJob(tiny_dir, JOB.data, JOB.checkpoints, JOB.experiment, 1, 8)
    overrides = as_overrides(rl_settings(load_config(paper_config).rl.job_slice(algo), job))
    built = worker_dataclasses(compose(overrides))
    assert not unread_fields(overrides, built)
    rollout = built["actor_rollout_ref.rollout"]
    # vLLM's context: a whole prompt and response, not the model's 262144 (verl 0.9.1's default)
    assert rollout.max_model_len == 2048 + 8192


@pytest.mark.filterwarnings("ignore:Failed to create processor")
def test_alignment_overrides_are_fields_of_what_verls_workers_read(paper_config, tiny_dir, disc_dir):
    job = TrainerJob(tiny_dir, Path("/data/align"), Path("/work/align/ckpt"), "align-qwen3-vl-4b", 1, 8)
    overrides = align_overrides(paper_config, job, disc_dir)
    built = worker_dataclasses(compose(overrides, align.CONFIG_NAME, align.CONFIG_DIR))
    assert not unread_fields(overrides, built)
    assert built["actor_rollout_ref.rollout"].max_model_len == 2048 + 6144
    # the V1 trainer sizes both of the critic engine's budgets from this one field (trainer_base._setup)
    critic = built["critic"]
    assert critic.ppo_infer_max_token_len_per_gpu == 8192 and critic.engine.use_dynamic_bsz
    assert critic.model.external_lib == align.MODELS_MODULE and critic.engine is critic.fsdp


@pytest.mark.parametrize(
    ("stage", "edit", "match"),
    [
        (
            "align",
            {"freeze_vision_tower": True},
            "align: freeze_vision_tower: true cannot be honoured by verl",
        ),
        ("rl", {"freeze_vision_tower": True}, "rl: freeze_vision_tower: true cannot be honoured by verl"),
        ("rl", "cap", "algorithm.dapo.dynamic_sampling.max_num_gen_batches cannot be honoured by verl"),
    ],
)
def test_settings_verl_cannot_honour_are_refused_with_the_reason(paper_config, stage, edit, match):
    from prism.core.config import ConfigError

    raw = copy.deepcopy(paper_config)
    if edit == "cap":
        raw["rl"]["algorithm"]["dapo"]["dynamic_sampling"]["max_num_gen_batches"] = 10
    else:
        raw[stage] |= edit
    with pytest.raises(ConfigError, match=match):
        load_config(raw)
    raw[stage]["engine"] = "cpu"  # the CPU engine honours both
    load_config(raw)
