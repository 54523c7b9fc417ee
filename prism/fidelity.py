"""The fidelity table: every setting of the paper's hyperparameter table and of the authors' scripts
(method-reference §2.4, §3.7, §4.1-4.3, §6, §7) beside ours, and the reference's faults B1-B14.

Our values are read from `config/config.yaml` and from what each engine renders from it: the overrides our
verl commands compose, the YAML our LLaMA-Factory engine writes, the DeepSpeed and `accelerate launch`
settings of the warmup, the optimizer and schedule the warmup builds, the MoE config the upcycling builds,
and the lmms-eval and judge command lines. The reference's values are the method reference's.

`python -m prism.fidelity` rewrites docs/fidelity.md; tests/test_fidelity.py regenerates it and fails when
a value, a key or a test name drifts, and checks each row against the reference.
"""

from __future__ import annotations

import copy
import json
import math
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config" / "config.yaml"
DOC = ROOT / "docs" / "fidelity.md"
FIDELITY_TEST = "tests/test_fidelity.py::test_every_setting_reaches_its_library_as_the_table_says"
NOT_SET = None  # the reference says nothing for this setting
VERL_DEFAULT = " (verl default)"
# verl's FSDP engine warms up for lr_warmup_steps, or for lr_warmup_steps_ratio x the steps where that is <= 0
WARMUP_STEPS = "lr_warmup_steps > 0 ? lr_warmup_steps : int(lr_warmup_steps_ratio x total_training_steps)"
# The reference's unit alternatives (mm_gad_no_llm), each recognised by our reward's unit rule.
REFERENCE_UNITS = 50


@dataclass(frozen=True)
class Setting:
    """One row: the reference's values, where ours comes from and where the library reads it."""

    stage: str
    name: str
    paper: object  # the seed README's hyperparameter table (method-reference §6, §7)
    scripts: object  # the authors' scripts and code
    key: str  # our config key ("" where the engine fixes the value)
    engine: str  # the rendering that reads it (RENDERINGS), "" where only the config holds it
    read_as: str  # the key or argument in that rendering
    tests: tuple[str, ...] = ()
    why: str = ""  # why we differ, or which side of a paper/scripts disagreement we follow


@dataclass(frozen=True)
class Fault:
    """One of the reference's faults (method-reference §10) and what guards our handling of it."""

    name: str
    handling: str
    tests: tuple[str, ...]


def _paper(raw: dict):
    from prism.core.config import load_config

    return load_config(raw)


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


@cache
def _verl_defaults() -> dict:
    from importlib.util import find_spec

    # verl's whole config tree as its trainer composes it, read without importing verl (and torch with it)
    tree = Path(find_spec("verl").origin).parent / "trainer" / "config" / "_generated_ppo_trainer.yaml"
    return _flat(yaml.safe_load(tree.read_text()))


def _verl(settings: dict) -> dict:
    """Our overrides by verl key (`+` dropped), over verl 0.9.1's defaults, which are marked as such."""
    ours = {key.lstrip("+"): value for key, value in settings.items()}
    defaults = {key: (value, VERL_DEFAULT) for key, value in _verl_defaults().items() if key not in ours}
    return {key: (value, "") for key, value in ours.items()} | defaults


def _with_warmup_steps(rendered: dict) -> dict:
    def value(key):
        return rendered[f"{ACT}optim.{key}"][0]

    steps = value("lr_warmup_steps")
    if steps <= 0:
        steps = int(value("lr_warmup_steps_ratio") * rendered["trainer.total_training_steps"][0])
    return rendered | {WARMUP_STEPS: (steps, "")}


def _trainer_optimizer(sft: dict) -> dict:
    """The optimizer class the transformers Trainer under LLaMA-Factory builds where our YAML sets none."""
    if "optim" in sft:
        return {}
    from transformers import Trainer, TrainingArguments

    arguments = TrainingArguments(output_dir="/tmp", report_to="none")
    optimizer, _ = Trainer.get_optimizer_cls_and_kwargs(arguments)
    return {"optim": (optimizer.__name__, f" (transformers default, {arguments.optim.value})")}


def _reward() -> dict:
    from prism.core import reward

    read = {"MAX_ANSWER_CHARS": reward.MAX_ANSWER_CHARS, "unit alternatives": len(reward._UNIT_WORDS)}
    return {key: (value, "") for key, value in read.items()}


def _options(command: list[str]) -> dict:
    """`--flag value` pairs of a command line (a flag with no value: True), with `--model_args` and
    `--gen_kwargs` split into their `k=v` items."""
    out, i = {}, 0
    while i < len(command):
        word = command[i]
        if word.startswith("--"):
            value = command[i + 1] if i + 1 < len(command) and not command[i + 1].startswith("--") else True
            out[word] = value
            if word in ("--model_args", "--gen_kwargs"):
                out |= {f"{word}.{k}": v for k, v in (item.split("=", 1) for item in value.split(","))}
            i += 1 if value is True else 2
        else:
            i += 1
    return {key: (value, "") for key, value in out.items()}


def _warmup_objects(cfg: dict) -> dict:
    """The optimizer and schedule the warmup builds from its slice, read back from torch."""
    import torch

    from prism.core.training import optimizer_and_schedule

    total = 1000
    optimizer, schedule = optimizer_and_schedule([torch.nn.Parameter(torch.zeros(1))], cfg, total)
    factor = schedule.lr_lambdas[0]
    warmup = next(step for step in range(total) if factor(step) >= 1) + 1  # the factor's first 1
    decay = (
        "cosine" if math.isclose(factor(warmup + (total - warmup) // 2), 0.5, abs_tol=1e-2) else "constant"
    )
    read = {
        f"{type(optimizer).__name__}.lr": optimizer.defaults["lr"],
        f"{type(optimizer).__name__}.weight_decay": optimizer.defaults["weight_decay"],
        "LambdaLR warmup fraction": warmup / total,
        "LambdaLR decay": decay,
    }
    return {key: (value, "") for key, value in read.items()}


def _moe_config(upcycle: dict) -> dict:
    from transformers import Qwen3VLConfig

    from prism.discriminator.upcycle import moe_config

    dense = Qwen3VLConfig(text_config={"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2})
    text = moe_config(
        dense, upcycle["num_experts"], upcycle["top_k"], upcycle["router_aux_loss_coef"]
    ).text_config
    read = {
        f"text_config.{name}": getattr(text, name)
        for name in ("num_experts", "num_experts_per_tok", "decoder_sparse_step", "router_aux_loss_coef")
    }
    read["text_config.mlp_only_layers"] = list(text.mlp_only_layers)
    read["text_config.moe_intermediate_size / intermediate_size"] = (
        text.moe_intermediate_size / dense.text_config.intermediate_size
    )
    read |= {f"upcycle({name}=)": upcycle[name] for name in ("noise_std", "router_std")}
    return {key: (value, "") for key, value in read.items()}


def renderings(raw: dict) -> dict[str, dict]:
    """What each engine renders from the config `raw`: {engine: {library key: (value, note)}}."""
    from prism.discriminator.accelerated import DEEPSPEED_CONFIG, launch_command
    from prism.eval.lmms import judge_command, lmms_eval_command
    from prism.eval.lmms_tasks import VARIANTS
    from prism.sft.llamafactory import training_yaml
    from prism.verl.command import TrainerJob, align_settings, rl_settings

    cfg = _paper(raw)

    def job(stage) -> TrainerJob:
        nodes = stage.resources.nodes
        return TrainerJob(
            Path("/model"), Path("/data"), Path("/ckpt"), "run", nodes, stage.resources.gpus // nodes
        )

    out = {
        "verl align": _verl(align_settings(cfg.align.stage_slice(), job(cfg.align), Path("/discriminator")))
    }
    for algo in cfg.rl.algorithms:
        out[f"verl {algo}"] = _with_warmup_steps(_verl(rl_settings(cfg.rl.job_slice(algo), job(cfg.rl))))
    sft = training_yaml(cfg.sft.stage_slice(), Path("/model"), Path("/data"), Path("/out"), None)
    out["LLaMA-Factory YAML"] = {key: (value, "") for key, value in sft.items()} | _trainer_optimizer(sft)
    warmup = cfg.discriminator.warmup
    launch = launch_command(warmup.resources.gpus, warmup.grad_accum)
    out["accelerate launch"] = _options(shlex.split(launch))
    out["warmup DeepSpeed"] = {k: (v, "") for k, v in _flat(json.loads(DEEPSPEED_CONFIG.read_text())).items()}
    warmup_slice = {"warmup": warmup.model_dump(exclude={"resources"})}
    warmup_slice["value_head_dropout"] = cfg.discriminator.value_head_dropout
    out["warmup job"] = {key: (value, "") for key, value in _flat(warmup_slice).items()}
    out["warmup torch"] = _warmup_objects(warmup_slice["warmup"])
    out["upcycle"] = _moe_config(cfg.discriminator.upcycle.model_dump(exclude={"resources"}))
    evaluation = cfg.eval.stage_slice()
    policy_gpus = cfg.eval.resources.gpus - (1 if cfg.eval.needs_judge() else 0)
    tasks = [task for benchmark in cfg.eval.benchmarks for task in cfg.eval.scoring[benchmark].tasks]
    out["lmms-eval"] = _options(
        lmms_eval_command(evaluation, Path("/m"), tasks, Path("/t"), Path("/c"), Path("/o"), policy_gpus)
    )
    out["lmms-eval tasks"] = {f"{t} max_new_tokens": (v.max_new_tokens, "") for t, v in VARIANTS.items()}
    out["judge server"] = _options(judge_command(Path("/judge"), evaluation["judge"], 8000, "job"))
    out["reward"] = _reward()
    return out


def config_value(raw: dict, key: str):
    """The value at a dotted key of the validated config (defaults filled in)."""
    tree = _paper(raw).model_dump()
    for alternative in key.split(", else "):  # "a, else b": b where a is unset
        node = tree
        for part in alternative.split("."):
            node = node[part]
        if node is not None:
            return node
    return None


def same(ours, reference) -> bool:
    if isinstance(ours, bool) or isinstance(reference, bool):
        return str(ours).lower() == str(reference).lower()
    try:
        return math.isclose(float(ours), float(reference), rel_tol=1e-9)
    except (TypeError, ValueError):
        return str(ours).strip().lower() == str(reference).strip().lower()


def fmt(value) -> str:
    if value is NOT_SET:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return str(value)


def read(setting: Setting, raw: dict, rendered: dict) -> tuple[object, str]:
    """Our value as the library reads it (else as the config holds it), and a note on where it came from."""
    if setting.engine:
        value, note = rendered[setting.engine][setting.read_as]
        return value, note
    return config_value(raw, setting.key), ""


def status(setting: Setting, ours) -> str:
    """`same`, `paper` / `scripts` (where the two disagree: the one we follow), or `differs`."""
    refs = {
        side: value
        for side, value in (("paper", setting.paper), ("scripts", setting.scripts))
        if value is not NOT_SET
    }
    matched = [side for side, value in refs.items() if same(ours, value)]
    if len(matched) == len(refs):
        return "same"
    return matched[0] if matched else "differs"


# Test-file abbreviations keep the table narrow: every test named in a row is checked to exist.
VC = "tests/test_verl_command.py::"
SL = "tests/test_sft_llamafactory.py::"
CF = "tests/test_config.py::test_paper_config_matches_the_published_setup"
PL = "tests/test_plan.py::"
LE = "tests/test_lmms_eval.py::"
LV = "tests/test_lmms_eval_vllm.py::"
EN = "tests/test_engines.py::"
CO = "tests/test_core.py::"
AV = "tests/test_align_verl.py::"
RW = "tests/test_reward.py::"
RL = "tests/test_rl.py::"
WU = "tests/test_warmup.py::"
VC_RL = VC + "test_verl_runs_each_algorithm_as_published"
VC_ALIGN = VC + "test_alignment_runs_as_the_authors_script_on_our_trainer"
SL_YAML = SL + "test_paper_yaml_has_every_hyperparameter_of_the_seed_sft_column"
PL_WARMUP = PL + "test_warmup_runs_one_process_in_tiny_mode_and_accelerate_with_zero2_on_the_cluster"
ALIGN_STEPS = (
    "the seed README's 500 (the authors' script runs 1500; the released checkpoint is probably its "
    "step-500 save)"
)
B10_SCRIPTS = "the scripts made the released checkpoints; the README's value is one edit away (B10)"
NO_VALIDATION = "validation is the evaluation stage's job: every checkpoint is measured on the 7 benchmarks"
SPEED_ONLY = "speed and memory only, not the math"


def _s(stage, name, paper, scripts, key, engine, read_as, *tests, why=""):
    return Setting(stage, name, paper, scripts, key, engine, read_as, tuple(tests), why)


SFT, UP, WARM, ALIGN, RL_ALL, REWARD, EVAL = (
    "Stage 1 SFT (§7)",
    "MoE upcycling (§1.2-1.4)",
    "Discriminator warmup (§2.4)",
    "Stage 2 alignment (§3.4-3.7)",
    "Stage 3 RLVR, shared (§4.1)",
    "Stage 3 reward (§4.3)",
    "Evaluation (§6)",
)
LF, VA = "LLaMA-Factory YAML", "verl align"
ACT, ROLL, CRIT = "actor_rollout_ref.actor.", "actor_rollout_ref.rollout.", "critic."

SETTINGS: list[Setting] = [
    # ---- Stage 1: the seed README's SFT column; the authors published no YAML ----
    _s(SFT, "optimizer", "AdamW", NOT_SET, "", LF, "optim", FIDELITY_TEST),
    _s(SFT, "scheduler", "cosine", NOT_SET, "sft.scheduler", LF, "lr_scheduler_type", SL_YAML),
    _s(SFT, "learning rate", 1e-5, NOT_SET, "sft.lr", LF, "learning_rate", SL_YAML, CF),
    _s(SFT, "weight decay", 0.0, NOT_SET, "sft.weight_decay", LF, "weight_decay", SL_YAML),
    _s(SFT, "epochs", 1, NOT_SET, "sft.epochs", LF, "num_train_epochs", SL_YAML),
    _s(SFT, "warmup ratio", 0.1, NOT_SET, "sft.warmup_ratio", LF, "warmup_ratio", SL_YAML, CF),
    _s(
        SFT,
        "batch size per GPU",
        2,
        NOT_SET,
        "sft.batch_size",
        LF,
        "per_device_train_batch_size",
        SL_YAML,
        why=(
            'the seed\'s "global batch size 2" read as per device (16 over 8 GPUs); a global 2 would not '
            "split over 8 GPUs"
        ),
    ),
    _s(
        SFT,
        "max length",
        8192,
        NOT_SET,
        "sft.max_length",
        LF,
        "cutoff_len",
        SL_YAML,
        why=(
            '"max response length 8192" read as LLaMA-Factory\'s cap on prompt, image tokens and response '
            "together"
        ),
    ),
    _s(
        SFT,
        "GPUs",
        8,
        NOT_SET,
        "sft.resources.gpus",
        "",
        "",
        PL + "test_gpu_rule_requests_eight_h100_with_explicit_memory_time_and_cpus",
    ),
    # ---- upcycling ----
    _s(
        UP,
        "experts",
        4,
        4,
        "discriminator.upcycle.num_experts",
        "upcycle",
        "text_config.num_experts",
        CF,
        FIDELITY_TEST,
    ),
    _s(
        UP,
        "top-k",
        2,
        2,
        "discriminator.upcycle.top_k",
        "upcycle",
        "text_config.num_experts_per_tok",
        CF,
        FIDELITY_TEST,
    ),
    _s(
        UP,
        "expert width / dense FFN",
        NOT_SET,
        1.0,
        "",
        "upcycle",
        "text_config.moe_intermediate_size / intermediate_size",
        EN + "test_upcycled_moe_without_noise_reproduces_dense_logits",
    ),
    _s(UP, "every layer MoE", NOT_SET, 1, "", "upcycle", "text_config.decoder_sparse_step", FIDELITY_TEST),
    _s(UP, "dense-only layers", NOT_SET, [], "", "upcycle", "text_config.mlp_only_layers", FIDELITY_TEST),
    _s(
        UP,
        "load-balancing coefficient",
        NOT_SET,
        0.01,
        "discriminator.upcycle.router_aux_loss_coef",
        "upcycle",
        "text_config.router_aux_loss_coef",
        FIDELITY_TEST,
    ),
    _s(
        UP,
        "expert noise std (absolute)",
        NOT_SET,
        0.01,
        "discriminator.upcycle.noise_std",
        "upcycle",
        "upcycle(noise_std=)",
        "tests/test_fidelity.py::test_upcycling_draws_noise_and_router_at_the_configured_std",
        EN + "test_noisy_upcycling_perturbs_every_expert_differently",
    ),
    _s(
        UP,
        "router init std",
        NOT_SET,
        0.02,
        "discriminator.upcycle.router_std",
        "upcycle",
        "upcycle(router_std=)",
        "tests/test_fidelity.py::test_upcycling_draws_noise_and_router_at_the_configured_std",
    ),
    _s(
        UP,
        "value-head dropout",
        NOT_SET,
        0.1,
        "discriminator.value_head_dropout",
        "warmup job",
        "value_head_dropout",
        AV + "test_the_update_drops_out_the_heads_input_as_the_warmup_saved_it",
    ),
    # ---- warmup ----
    _s(
        WARM,
        "learning rate",
        NOT_SET,
        1e-5,
        "discriminator.warmup.lr",
        "warmup torch",
        "AdamW.lr",
        FIDELITY_TEST,
    ),
    _s(
        WARM,
        "weight decay",
        NOT_SET,
        0.01,
        "discriminator.warmup.weight_decay",
        "warmup torch",
        "AdamW.weight_decay",
        FIDELITY_TEST,
    ),
    _s(
        WARM,
        "schedule",
        NOT_SET,
        "cosine",
        "discriminator.warmup.scheduler",
        "warmup torch",
        "LambdaLR decay",
        FIDELITY_TEST,
    ),
    _s(
        WARM,
        "warmup fraction of steps",
        NOT_SET,
        0.1,
        "discriminator.warmup.warmup_ratio",
        "warmup torch",
        "LambdaLR warmup fraction",
        FIDELITY_TEST,
    ),
    _s(
        WARM,
        "pairs per GPU and forward",
        NOT_SET,
        4,
        "discriminator.warmup.batch_size",
        "warmup job",
        "warmup.batch_size",
        WU + "test_a_batch_of_4_pairs_is_a_forward_of_8_sequences_teachers_then_students",
    ),
    _s(
        WARM,
        "gradient accumulation",
        NOT_SET,
        4,
        "discriminator.warmup.grad_accum",
        "accelerate launch",
        "--gradient_accumulation_steps",
        PL_WARMUP,
    ),
    _s(
        WARM,
        "processes",
        NOT_SET,
        8,
        "discriminator.warmup.resources.gpus",
        "accelerate launch",
        "--num_processes",
        PL_WARMUP,
    ),
    _s(
        WARM,
        "epochs",
        NOT_SET,
        1,
        "discriminator.warmup.epochs",
        "warmup job",
        "warmup.epochs",
        FIDELITY_TEST,
    ),
    _s(
        WARM,
        "max length",
        NOT_SET,
        8192,
        "discriminator.warmup.max_length",
        "warmup job",
        "warmup.max_length",
        FIDELITY_TEST,
        "tests/test_fidelity.py::test_warmup_leaves_over_long_lines_out_whole",
    ),
    _s(
        WARM,
        "image long side (px)",
        NOT_SET,
        560,
        "discriminator.warmup.max_image_side",
        "warmup job",
        "warmup.max_image_side",
        FIDELITY_TEST,
    ),
    _s(
        WARM,
        "processor max_pixels",
        NOT_SET,
        313600,
        "discriminator.warmup.max_pixels",
        "warmup job",
        "warmup.max_pixels",
        FIDELITY_TEST,
        EN + "test_image_pixel_cap_really_shrinks_images",
    ),
    _s(
        WARM,
        "grad clip (accelerate)",
        NOT_SET,
        1.0,
        "discriminator.warmup.grad_clip",
        "warmup job",
        "warmup.grad_clip",
        FIDELITY_TEST,
    ),
    _s(WARM, "grad clip (DeepSpeed)", NOT_SET, 1.0, "", "warmup DeepSpeed", "gradient_clipping", PL_WARMUP),
    _s(WARM, "ZeRO stage", NOT_SET, 2, "", "warmup DeepSpeed", "zero_optimization.stage", PL_WARMUP),
    _s(
        WARM,
        "ZeRO bucket sizes",
        NOT_SET,
        5e8,
        "",
        "warmup DeepSpeed",
        "zero_optimization.reduce_bucket_size",
        FIDELITY_TEST,
    ),
    _s(WARM, "precision", NOT_SET, "bf16", "", "accelerate launch", "--mixed_precision", PL_WARMUP),
    _s(
        WARM,
        "gradient checkpointing",
        NOT_SET,
        True,
        "discriminator.warmup.gradient_checkpointing",
        "warmup job",
        "warmup.gradient_checkpointing",
        FIDELITY_TEST,
    ),
    _s(WARM, "seed", NOT_SET, 42, "discriminator.warmup.seed", "warmup job", "warmup.seed", FIDELITY_TEST),
    _s(
        WARM,
        "held-out lines",
        NOT_SET,
        0,
        "discriminator.warmup.heldout_pairs",
        "warmup job",
        "warmup.heldout_pairs",
        FIDELITY_TEST,
        why="1024 lines (of ~120K) kept out to measure pairwise accuracy before and after",
    ),
    # ---- alignment: qwen3_vl_prism.sh ----
    _s(ALIGN, "caption (perception) weight α", 0.5, 0.5, "align.alpha", VA, "prism.alpha", VC_ALIGN, CF),
    _s(
        ALIGN,
        "format penalty",
        NOT_SET,
        1.5,
        "align.format_penalty",
        VA,
        "prism.format_penalty",
        VC_ALIGN,
        CF,
    ),
    _s(
        ALIGN,
        "score clip",
        NOT_SET,
        10.0,
        "align.score_clip",
        VA,
        "prism.score_clip",
        VC_ALIGN,
        CO + "test_alignment_discriminator_loss_clips_scores_and_regularises",
    ),
    _s(
        ALIGN,
        "score regulariser",
        NOT_SET,
        0.001,
        "align.score_reg_coef",
        VA,
        "prism.score_reg_coef",
        VC_ALIGN,
        AV + "test_surrogate_loss_has_the_gradient_of_the_alignment_loss_over_data_parallel_ranks",
    ),
    _s(
        ALIGN,
        "steps",
        500,
        1500,
        "align.steps",
        VA,
        "trainer.total_training_steps",
        VC_ALIGN,
        why=ALIGN_STEPS,
    ),
    _s(ALIGN, "prompts per step", 4, 4, "align.prompts_per_step", VA, "data.train_batch_size", VC_ALIGN),
    _s(
        ALIGN,
        "mini-batch (one update per step)",
        NOT_SET,
        4,
        "align.prompts_per_step",
        VA,
        ACT + "ppo_mini_batch_size",
        VC_ALIGN,
    ),
    _s(ALIGN, "rollouts per prompt", 16, 16, "align.rollouts_per_prompt", VA, ROLL + "n", VC_ALIGN),
    _s(
        ALIGN,
        "max prompt length",
        NOT_SET,
        2048,
        "align.max_prompt_length",
        VA,
        "data.max_prompt_length",
        VC_ALIGN,
    ),
    _s(
        ALIGN,
        "max response length",
        NOT_SET,
        6144,
        "align.max_response_length",
        VA,
        "data.max_response_length",
        VC_ALIGN,
    ),
    _s(
        ALIGN,
        "filter over-long prompts",
        NOT_SET,
        True,
        "",
        VA,
        "data.filter_overlong_prompts",
        FIDELITY_TEST,
    ),
    _s(
        ALIGN,
        "prompt truncation",
        NOT_SET,
        "right",
        "",
        VA,
        "data.truncation",
        FIDELITY_TEST,
        why=(
            "over-long prompts are filtered first, so a truncation would be a bug: error instead of a silent "
            "cut"
        ),
    ),
    _s(ALIGN, "actor learning rate", 1e-6, 1e-6, "align.actor_lr", VA, ACT + "optim.lr", VC_ALIGN),
    _s(
        ALIGN,
        "actor weight decay",
        0.01,
        0.01,
        "align.weight_decay",
        VA,
        ACT + "optim.weight_decay",
        FIDELITY_TEST,
    ),
    _s(ALIGN, "actor schedule", NOT_SET, "constant", "", VA, ACT + "optim.lr_scheduler_type", FIDELITY_TEST),
    _s(ALIGN, "actor grad clip", NOT_SET, 1.0, "align.grad_clip", VA, ACT + "optim.clip_grad", FIDELITY_TEST),
    _s(ALIGN, "PPO clip low", NOT_SET, 0.2, "align.clip_ratio", VA, ACT + "clip_ratio_low", VC_ALIGN),
    _s(ALIGN, "PPO clip high", NOT_SET, 0.2, "align.clip_ratio", VA, ACT + "clip_ratio_high", VC_ALIGN),
    _s(ALIGN, "dual clip c", NOT_SET, 3.0, "", VA, ACT + "clip_ratio_c", FIDELITY_TEST),
    _s(ALIGN, "loss aggregation", NOT_SET, "token-mean", "", VA, ACT + "loss_agg_mode", FIDELITY_TEST),
    _s(ALIGN, "policy loss", NOT_SET, "vanilla", "", VA, ACT + "policy_loss.loss_mode", FIDELITY_TEST),
    _s(ALIGN, "PPO epochs", NOT_SET, 1, "", VA, ACT + "ppo_epochs", FIDELITY_TEST),
    _s(ALIGN, "entropy coefficient", NOT_SET, 0, "", VA, ACT + "entropy_coeff", FIDELITY_TEST),
    _s(ALIGN, "KL loss", NOT_SET, False, "align.kl_coef", VA, ACT + "use_kl_loss", VC_ALIGN),
    _s(ALIGN, "KL in reward", NOT_SET, False, "", VA, "algorithm.use_kl_in_reward", FIDELITY_TEST),
    _s(
        ALIGN,
        "remove padding (actor)",
        True,
        True,
        "",
        VA,
        "actor_rollout_ref.model.use_remove_padding",
        FIDELITY_TEST,
    ),
    _s(ALIGN, "dynamic batch size (actor)", True, True, "", VA, ACT + "use_dynamic_bsz", FIDELITY_TEST),
    _s(
        ALIGN,
        "actor token budget per GPU",
        NOT_SET,
        8192,
        "align.verl.ppo_max_token_len_per_gpu",
        VA,
        ACT + "ppo_max_token_len_per_gpu",
        FIDELITY_TEST,
    ),
    _s(ALIGN, "actor micro batch", NOT_SET, 1, "", VA, ACT + "ppo_micro_batch_size_per_gpu", FIDELITY_TEST),
    _s(
        ALIGN,
        "gradient checkpointing (actor)",
        NOT_SET,
        True,
        "align.verl.gradient_checkpointing",
        VA,
        "actor_rollout_ref.model.enable_gradient_checkpointing",
        FIDELITY_TEST,
    ),
    _s(
        ALIGN,
        "actor param offload",
        NOT_SET,
        True,
        "align.verl.offload",
        VA,
        ACT + "fsdp_config.param_offload",
        VC_ALIGN,
    ),
    _s(
        ALIGN,
        "actor optimizer offload",
        NOT_SET,
        True,
        "align.verl.offload",
        VA,
        ACT + "fsdp_config.optimizer_offload",
        VC_ALIGN,
    ),
    _s(ALIGN, "rollout engine", NOT_SET, "vllm", "", VA, ROLL + "name", FIDELITY_TEST),
    _s(
        ALIGN,
        "rollout tensor parallel",
        NOT_SET,
        1,
        "align.verl.rollout_tensor_parallel",
        VA,
        ROLL + "tensor_model_parallel_size",
        FIDELITY_TEST,
    ),
    _s(ALIGN, "rollout temperature", NOT_SET, 1.0, "align.temperature", VA, ROLL + "temperature", VC_ALIGN),
    _s(ALIGN, "rollout top_p", NOT_SET, 1, "", VA, ROLL + "top_p", FIDELITY_TEST),
    _s(ALIGN, "rollout top_k", NOT_SET, -1, "", VA, ROLL + "top_k", FIDELITY_TEST),
    _s(
        ALIGN,
        "vLLM memory fraction",
        NOT_SET,
        0.25,
        "align.verl.rollout_gpu_memory_utilization",
        VA,
        ROLL + "gpu_memory_utilization",
        VC_ALIGN,
    ),
    _s(
        ALIGN,
        "vLLM batched tokens",
        NOT_SET,
        8192,
        "align.verl.max_num_batched_tokens",
        VA,
        ROLL + "max_num_batched_tokens",
        VC_ALIGN,
    ),
    _s(ALIGN, "vLLM eager mode", NOT_SET, False, "", VA, ROLL + "enforce_eager", FIDELITY_TEST),
    _s(ALIGN, "vLLM frees its cache", NOT_SET, True, "", VA, ROLL + "free_cache_engine", FIDELITY_TEST),
    _s(
        ALIGN,
        "log-prob batch per GPU",
        NOT_SET,
        "1 sequence",
        "align.verl.log_prob_max_token_len_per_gpu",
        VA,
        ROLL + "log_prob_max_token_len_per_gpu",
        FIDELITY_TEST,
        why="dynamic log-prob batches of this many tokens instead of 1 sequence: " + SPEED_ONLY,
    ),
    _s(ALIGN, "discriminator learning rate", NOT_SET, 1e-6, "align.disc_lr", VA, CRIT + "optim.lr", VC_ALIGN),
    _s(
        ALIGN,
        "discriminator weight decay",
        0.01,
        0.01,
        "align.weight_decay",
        VA,
        CRIT + "optim.weight_decay",
        FIDELITY_TEST,
    ),
    _s(
        ALIGN,
        "discriminator grad clip",
        NOT_SET,
        1.0,
        "align.grad_clip",
        VA,
        CRIT + "optim.clip_grad",
        FIDELITY_TEST,
    ),
    _s(
        ALIGN,
        "discriminator schedule",
        NOT_SET,
        "constant",
        "",
        VA,
        CRIT + "optim.lr_scheduler_type",
        FIDELITY_TEST,
    ),
    _s(
        ALIGN,
        "discriminator token budget",
        NOT_SET,
        8192,
        "align.verl.ppo_max_token_len_per_gpu",
        VA,
        CRIT + "ppo_infer_max_token_len_per_gpu",
        FIDELITY_TEST,
    ),
    _s(
        ALIGN,
        "remove padding (discriminator)",
        True,
        True,
        "",
        VA,
        CRIT + "model.use_remove_padding",
        FIDELITY_TEST,
    ),
    _s(
        ALIGN,
        "gradient checkpointing (discriminator)",
        NOT_SET,
        True,
        "align.verl.gradient_checkpointing",
        VA,
        CRIT + "model.enable_gradient_checkpointing",
        FIDELITY_TEST,
    ),
    _s(
        ALIGN,
        "discriminator param offload",
        NOT_SET,
        True,
        "align.verl.offload",
        VA,
        CRIT + "fsdp.param_offload",
        VC_ALIGN,
    ),
    _s(
        ALIGN,
        "discriminator optimizer offload",
        NOT_SET,
        True,
        "align.verl.offload",
        VA,
        CRIT + "fsdp.optimizer_offload",
        FIDELITY_TEST,
    ),
    _s(ALIGN, "discriminator warmup steps", NOT_SET, 0, "", VA, "trainer.critic_warmup", VC_ALIGN),
    _s(ALIGN, "GPUs per node", 8, 8, "align.resources.gpus", VA, "trainer.n_gpus_per_node", FIDELITY_TEST),
    _s(
        ALIGN,
        "checkpoint every",
        NOT_SET,
        500,
        "align.verl.save_freq",
        VA,
        "trainer.save_freq",
        FIDELITY_TEST,
        why="every 100 steps, so a preempted job loses less",
    ),
    _s(
        ALIGN,
        "validation before training",
        NOT_SET,
        True,
        "",
        VA,
        "trainer.val_before_train",
        FIDELITY_TEST,
        why=NO_VALIDATION,
    ),
]

_RL_SHARED = [
    ("steps", 1500, 1500, "rl.steps", "trainer.total_training_steps", (VC_RL,), ""),
    ("prompts per step", 32, 32, "rl.prompts_per_step", "data.train_batch_size", (VC_RL,), ""),
    ("mini-batch", 32, 32, "rl.prompts_per_step", ACT + "ppo_mini_batch_size", (VC_RL,), ""),
    ("rollouts per prompt", 16, 16, "rl.rollouts_per_prompt", ROLL + "n", (VC_RL,), ""),
    ("max prompt length", NOT_SET, 2048, "rl.max_prompt_length", "data.max_prompt_length", (VC_RL,), ""),
    ("max response length", 8192, 8192, "rl.max_response_length", "data.max_response_length", (VC_RL,), ""),
    ("learning rate", 1e-6, 1e-6, "rl.lr", ACT + "optim.lr", (VC_RL,), ""),
    ("grad clip", NOT_SET, 1.0, "rl.grad_clip", ACT + "optim.clip_grad", (VC_RL,), ""),
    (
        "KL loss",
        "per-algorithm default",
        False,
        "rl.kl_coef",
        ACT + "use_kl_loss",
        (VC_RL,),
        "KL is off in all three scripts; " + B10_SCRIPTS,
    ),
    ("rollout temperature", NOT_SET, 1.0, "rl.temperature", ROLL + "temperature", (VC_RL,), ""),
    ("remove padding", True, True, "", "actor_rollout_ref.model.use_remove_padding", (FIDELITY_TEST,), ""),
    ("dynamic batch size", True, True, "", ACT + "use_dynamic_bsz", (FIDELITY_TEST,), ""),
    ("entropy coefficient", NOT_SET, 0, "", ACT + "entropy_coeff", (FIDELITY_TEST,), ""),
    ("actor micro batch", NOT_SET, 1, "", ACT + "ppo_micro_batch_size_per_gpu", (FIDELITY_TEST,), ""),
    (
        "gradient checkpointing",
        NOT_SET,
        True,
        "rl.verl.gradient_checkpointing",
        "actor_rollout_ref.model.enable_gradient_checkpointing",
        (FIDELITY_TEST,),
        "",
    ),
    (
        "actor offload",
        NOT_SET,
        True,
        "rl.verl.offload",
        ACT + "fsdp_config.optimizer_offload",
        (FIDELITY_TEST,),
        "",
    ),
    (
        "vLLM memory fraction",
        NOT_SET,
        0.6,
        "rl.verl.rollout_gpu_memory_utilization",
        ROLL + "gpu_memory_utilization",
        (FIDELITY_TEST,),
        "",
    ),
    (
        "vLLM batched tokens",
        NOT_SET,
        10240,
        "rl.verl.max_num_batched_tokens",
        ROLL + "max_num_batched_tokens",
        (FIDELITY_TEST,),
        "",
    ),
    ("checkpoint every", NOT_SET, 120, "rl.verl.save_freq", "trainer.save_freq", (FIDELITY_TEST,), ""),
    (
        "GPUs per node",
        8,
        4,
        "rl.resources.gpus",
        "trainer.n_gpus_per_node",
        (FIDELITY_TEST,),
        "the README's 8 H100s; the scripts' 4 train the same 32 × 16 batch per step, only slower",
    ),
    (
        "validation before training",
        NOT_SET,
        True,
        "",
        "trainer.val_before_train",
        (FIDELITY_TEST,),
        NO_VALIDATION,
    ),
    (
        "prompt truncation",
        NOT_SET,
        "right",
        "",
        "data.truncation",
        (FIDELITY_TEST,),
        "over-long prompts are filtered first, so a truncation would be a bug: error instead of a silent cut",
    ),
]
SETTINGS += [
    _s(RL_ALL, name, paper, scripts, key, "verl grpo", read_as, *tests, why=why)
    for name, paper, scripts, key, read_as, tests, why in _RL_SHARED
]

# (setting, verl key, config key under rl.algorithm.<algo>, {algo: scripts' value}, tests, why by algo)
_RL_PER_ALGO = [
    (
        "policy loss",
        ACT + "policy_loss.loss_mode",
        "loss_mode",
        {"grpo": "vanilla", "dapo": "vanilla", "gspo": "gspo"},
        (VC_RL,),
    ),
    (
        "loss aggregation",
        ACT + "loss_agg_mode",
        "loss_agg_mode",
        {"grpo": "token-mean", "dapo": "token-mean", "gspo": "seq-mean-token-mean"},
        (VC_RL,),
    ),
    (
        "clip low",
        ACT + "clip_ratio_low",
        "clip_ratio_low",
        {"grpo": 0.2, "dapo": 0.2, "gspo": 3e-4},
        (VC_RL, RL + "test_policy_losses_clip_as_each_algorithm_specifies"),
    ),
    (
        "clip high",
        ACT + "clip_ratio_high",
        "clip_ratio_high",
        {"grpo": 0.2, "dapo": 0.28, "gspo": 4e-4},
        (VC_RL,),
    ),
    ("dual clip c", ACT + "clip_ratio_c", "clip_ratio_c", {"grpo": 3.0, "dapo": 10.0, "gspo": 3.0}, (VC_RL,)),
    (
        "weight decay",
        ACT + "optim.weight_decay",
        "weight_decay",
        {"grpo": 0.01, "dapo": 0.1, "gspo": 0.1},
        (VC_RL,),
    ),
    (
        "lr warmup steps, as verl computes them",
        WARMUP_STEPS,
        "lr_warmup_steps",
        {"grpo": 0, "dapo": 10, "gspo": 75},
        (VC_RL,),
    ),
    (
        "lr warmup as a fraction of the steps",
        ACT + "optim.lr_warmup_steps_ratio",
        "lr_warmup_steps_ratio",
        {"grpo": 0.0, "dapo": 0.0, "gspo": 0.05},
        (VC_RL,),
    ),
    (
        "group filter (dynamic sampling)",
        "algorithm.filter_groups.enable",
        "dynamic_sampling.enable",
        {"grpo": False, "dapo": True, "gspo": False},
        (VC_RL, VC + "test_dapo_filters_groups_on_accuracy_and_penalises_overlong_responses"),
    ),
    (
        "reward manager",
        "reward.reward_manager.name",
        "",
        {"grpo": "naive", "dapo": "dapo", "gspo": "dapo"},
        (VC_RL,),
    ),
    (
        "actor token budget per GPU",
        ACT + "ppo_max_token_len_per_gpu",
        "ppo_max_token_len_per_gpu",
        {"grpo": 10240, "dapo": 10240, "gspo": 20480},
        (FIDELITY_TEST, VC + "test_gspo_raises_the_token_budgets_as_its_script_does"),
    ),
    (
        "log-prob token budget per GPU",
        ROLL + "log_prob_max_token_len_per_gpu",
        "log_prob_max_token_len_per_gpu",
        {"grpo": 10240, "dapo": 10240, "gspo": 30720},
        (FIDELITY_TEST, VC + "test_gspo_raises_the_token_budgets_as_its_script_does"),
    ),
    ("top_p / top_k", ROLL + "top_p", "", {"grpo": 1, "dapo": 1, "gspo": 1}, (FIDELITY_TEST,)),
]


def _algorithm_key(algo: str, key: str) -> str:
    if key in ("ppo_max_token_len_per_gpu", "log_prob_max_token_len_per_gpu"):
        return f"rl.algorithm.{algo}.{key}, else rl.verl.{key}"
    return f"rl.algorithm.{algo}.{key}" if key else ""


_RL_WHY = {
    (
        "reward manager",
        "gspo",
    ): (
        "verl's naive manager: the script's dapo manager runs with its overlong buffer off, which scores the "
        "same"
    ),
    ("weight decay", "dapo"): "the README says 0.01 for all three; " + B10_SCRIPTS,
    ("weight decay", "gspo"): "the README says 0.01 for all three; " + B10_SCRIPTS,
}
# The seed README's RLVR column gives one weight decay for the three algorithms.
_RL_PAPER = {"weight decay": 0.01}
SETTINGS += [
    _s(
        f"Stage 3 RLVR, {algo.upper()} (§4.2)",
        name,
        _RL_PAPER.get(name, NOT_SET),
        by_algo[algo],
        _algorithm_key(algo, key),
        f"verl {algo}",
        read_as,
        *tests,
        why=_RL_WHY.get((name, algo), ""),
    )
    for algo in ("grpo", "dapo", "gspo")
    for name, read_as, key, by_algo, tests in _RL_PER_ALGO
]
SETTINGS += [
    _s(
        "Stage 3 RLVR, DAPO (§4.2)",
        "overlong buffer length",
        NOT_SET,
        4096,
        "rl.algorithm.dapo.overlong_buffer.length",
        "verl dapo",
        "reward.reward_kwargs.overlong_buffer_cfg.len",
        VC + "test_dapo_filters_groups_on_accuracy_and_penalises_overlong_responses",
        RL + "test_overlong_penalty_is_linear_inside_the_buffer",
    ),
    _s(
        "Stage 3 RLVR, DAPO (§4.2)",
        "overlong penalty factor",
        NOT_SET,
        1.0,
        "rl.algorithm.dapo.overlong_buffer.penalty_factor",
        "verl dapo",
        "reward.reward_kwargs.overlong_buffer_cfg.penalty_factor",
        VC + "test_dapo_filters_groups_on_accuracy_and_penalises_overlong_responses",
    ),
    _s(
        "Stage 3 RLVR, DAPO (§4.2)",
        "prompts generated at a time / per step",
        NOT_SET,
        3,
        "rl.algorithm.dapo.dynamic_sampling.gen_prompts_per_step",
        "verl dapo",
        "algorithm.filter_groups.max_inflight_gen_batches",
        VC + "test_dapo_filters_groups_on_accuracy_and_penalises_overlong_responses",
    ),
    _s(
        "Stage 3 RLVR, DAPO (§4.2)",
        "generation batches per step, at most",
        NOT_SET,
        10,
        "",
        "verl dapo",
        "algorithm.filter_groups.max_num_gen_batches",
        VC + "test_settings_verl_cannot_honour_are_refused_with_the_reason",
        why=(
            "verl 0.9.1's V1 trainer has no cap (it refills until the batch is full), so the cap is refused "
            "with engine: verl"
        ),
    ),
    # ---- reward ----
    _s(
        REWARD,
        "accuracy weight",
        0.8,
        0.8,
        "rl.accuracy_weight",
        "verl grpo",
        "reward.custom_reward_function.reward_kwargs.accuracy_weight",
        VC_RL,
        RW + "test_weights_come_from_config",
    ),
    _s(
        REWARD,
        "format weight",
        0.2,
        0.2,
        "rl.format_weight",
        "verl grpo",
        "reward.custom_reward_function.reward_kwargs.format_weight",
        VC_RL,
        RW + "test_weights_come_from_config",
    ),
    _s(
        REWARD,
        "answers this long or longer score 0 accuracy",
        NOT_SET,
        1024,
        "",
        "reward",
        "MAX_ANSWER_CHARS",
        RW + "test_reward_table",
    ),
    _s(
        REWARD,
        "unit alternatives stripped before comparing",
        NOT_SET,
        REFERENCE_UNITS,
        "",
        "reward",
        "unit alternatives",
        RW + "test_units_of_the_reference_list_pass_by_rule_without_math_verify",
        "tests/test_fidelity.py::test_every_unit_of_the_reference_list_is_stripped_by_rule",
        RW + "test_reward_table",
        why="every one of the reference's English and Chinese units, plus bare SI letters, more Chinese "
        "units, and units with an exponent or a ratio (cm^2, m/s): the reference scores those wrong",
    ),
    # ---- evaluation ----
    _s(
        EVAL,
        "temperature",
        NOT_SET,
        1.0,
        "eval.temperature",
        "lmms-eval",
        "--gen_kwargs.temperature",
        LE + "test_a_run_uses_the_paper_sampling_our_tasks_and_the_model_first",
    ),
    _s(
        EVAL,
        "top_p",
        NOT_SET,
        0.7,
        "eval.top_p",
        "lmms-eval",
        "--gen_kwargs.top_p",
        LE + "test_a_run_uses_the_paper_sampling_our_tasks_and_the_model_first",
    ),
    _s(
        EVAL,
        "batch size",
        NOT_SET,
        16,
        "eval.lmms_eval.batch_size",
        "lmms-eval",
        "--batch_size",
        FIDELITY_TEST,
    ),
    _s(
        EVAL,
        "tensor parallel",
        NOT_SET,
        1,
        "eval.lmms_eval.tensor_parallel",
        "lmms-eval",
        "--model_args.tensor_parallel_size",
        LV + "test_lmms_eval_s_vllm_model_is_built_from_the_arguments_our_engine_renders",
    ),
    _s(
        EVAL,
        "data parallel",
        NOT_SET,
        7,
        "eval.resources.gpus",
        "lmms-eval",
        "--model_args.data_parallel_size",
        LE + "test_a_run_uses_the_paper_sampling_our_tasks_and_the_model_first",
    ),
    _s(
        EVAL,
        "vLLM memory fraction",
        NOT_SET,
        0.75,
        "eval.lmms_eval.gpu_memory_utilization",
        "lmms-eval",
        "--model_args.gpu_memory_utilization",
        FIDELITY_TEST,
    ),
    _s(
        EVAL,
        "judge context",
        NOT_SET,
        32768,
        "eval.judge.max_model_len",
        "judge server",
        "--max-model-len",
        FIDELITY_TEST,
    ),
    _s(
        EVAL,
        "judge memory fraction",
        NOT_SET,
        0.95,
        "eval.judge.gpu_memory_utilization",
        "judge server",
        "--gpu-memory-utilization",
        LV + "test_our_judge_server_is_up_healthy_and_ours",
    ),
    _s(
        EVAL,
        "judge without CUDA graphs",
        NOT_SET,
        True,
        "eval.judge.enforce_eager",
        "judge server",
        "--enforce-eager",
        FIDELITY_TEST,
    ),
] + [
    _s(
        EVAL,
        f"{task} max_new_tokens",
        NOT_SET,
        limit,
        "",
        "lmms-eval tasks",
        f"{task} max_new_tokens",
        LV + "test_each_task_runs_with_prism_s_limit_and_prompt_as_lmms_eval_resolves_it",
        FIDELITY_TEST,
    )
    for task, limit in (
        ("prism_mathvista_testmini_cot", 16384),
        ("prism_mathverse_testmini", 16384),
        ("prism_mathvision_testmini", 24576),
        ("prism_wemath_testmini_reasoning", 49152),
        ("prism_mmmu_val", 8192),
        ("prism_mmmu_pro_vision", 8192),
        ("prism_mmmu_pro_standard", 8192),
        ("prism_hallusion_bench_image", 8192),
    )
]

NO_TEST = "no test can tell"
FAULTS = [
    Fault(
        "B1 warmup last token read from row 0's padding side",
        "fixed: each row's last attended token (CPU, Accelerate); the end offset of each packed row (verl)",
        (
            EN + "test_discriminator_scores_the_last_real_token_whatever_the_padding_side",
            AV + "test_last_token_values_reads_each_sequence_end_of_a_packed_output",
        ),
    ),
    Fault(
        "B2 teacher and student scored on different final tokens",
        "fixed: both sides rendered as the assistant turn, so both end on `<|im_end|>\\n`",
        (
            EN + "test_teacher_and_student_segments_end_on_the_same_scored_token",
            AV + "test_segment_rows_reproduce_the_cpu_engines_rendering_and_mrope_positions",
        ),
    ),
    Fault(
        "B3 discriminator loses MRoPE in alignment",
        "fixed: segment rows continue the prompt's 3-D MRoPE positions",
        (AV + "test_segment_rows_reproduce_the_cpu_engines_rendering_and_mrope_positions",),
    ),
    Fault(
        "B4 warmup and alignment prompts differ",
        "fixed where the parquet's system prompt and user turn are `prompt_messages`' (ours and the tiny "
        "data's): "
        "warmup, CPU and verl alignment render one way; a downloaded parquet's own prompt is verl's to "
        "template "
        "(§12: its columns are unverified)",
        (
            AV + "test_segment_rows_reproduce_the_cpu_engines_rendering_and_mrope_positions",
            EN + "test_teacher_and_student_segments_end_on_the_same_scored_token",
        ),
    ),
    Fault(
        "B5 a missing module path gives a silent random head",
        "fixed: a checkpoint without our head, or with another model's, is refused before any GPU work",
        (
            EN + "test_discriminator_round_trips_and_never_invents_a_head",
            AV + "test_a_headless_or_foreign_headed_checkpoint_is_refused",
            AV + "test_check_config_refuses_what_would_not_train_prism",
            "tests/test_bad_input.py::test_align_refuses_a_plain_model_as_discriminator",
        ),
    ),
    Fault(
        "B6 dead teacher length check, teacher cut at 6144 tokens",
        "fixed: a teacher whose caption and reasoning exceed align.max_response_length tokens (each policy's "
        "tokenizer) is left out at preparation and counted by reason, never cut",
        ("tests/test_prepare.py::test_teachers_longer_than_the_response_budget_are_left_out_and_counted",),
    ),
    Fault(
        "B7 warmup image failure strips the system turn",
        "fixed: a missing or unreadable image rejects its line at preparation, counted by reason",
        ("tests/test_prepare.py::test_warmup_lines_need_every_segment_and_their_image",),
    ),
    Fault(
        "B8 warmup truncates at 8192 tokens",
        "fixed: lines longer than max_length are left out whole and counted, never cut",
        ("tests/test_fidelity.py::test_warmup_leaves_over_long_lines_out_whole",),
    ),
    Fault(
        "B9 advantage docstring says A·(1−F) − p·F, code does A − p·F",
        "follows the code: an invalid rollout keeps its floored, normalised term and loses the penalty",
        (
            CO + "test_prism_advantage_mixes_experts_with_alpha_and_penalises_format",
            AV + "test_advantage_and_reward_come_from_clipped_scores_per_prompt_group",
        ),
    ),
    Fault(
        "B10 README vs scripts (steps, GPUs, weight decay, KL, penalty, file names)",
        "each choice is a row of the table above with its reason: alignment 500 steps and 8 RL GPUs "
        "(README); "
        "DAPO/GSPO weight decay 0.1, KL off, format penalty 1.5 (scripts)",
        (VC_ALIGN, VC_RL, CF, PL + "test_paper_plan_lists_every_job_with_gpu_hours"),
    ),
    Fault(
        "B11 `--include_path` tasks shadowed by built-ins; malformed judge URL",
        "fixed: `prism_` task names that include the built-ins; each judge family gets the variables it "
        "reads",
        (
            LV + "test_lmms_eval_indexes_every_variant_from_our_directory_beside_its_builtin",
            LE + "test_each_task_family_reaches_the_judge_the_way_it_reads_its_variables",
        ),
    ),
    Fault(
        "B12 critic on sdpa with hidden states requested",
        "avoided: the discriminator loads through verl's own model loader and asks for no hidden states; "
        f"speed and memory only, {NO_TEST} on CPU",
        (AV + "test_verl_loads_our_saved_discriminator_natively_with_identical_scores",),
    ),
    Fault(
        "B13 placeholder d_acc = 0.92 when nothing is valid",
        "avoided: with no valid pair the step logs only `prism/disc/pairs` = 0 and skips the update",
        (AV + "test_no_valid_pair_logs_no_placeholder_accuracy",),
    ),
    Fault(
        "B14 the paper draws 2 experts, the code has 4",
        "follows the code: 4 experts, top-2, no routing forced; one head scores caption and reasoning",
        (CF, "tests/test_fidelity.py::test_every_setting_reaches_its_library_as_the_table_says"),
    ),
]


@dataclass(frozen=True)
class Choice:
    """Where our algorithm differs from the reference's code on purpose, and why."""

    name: str
    reference: str
    ours: str
    tests: tuple[str, ...]


SURROGATE = AV + "test_surrogate_loss_has_the_gradient_of_the_alignment_loss_over_data_parallel_ranks"
NO_PAIR = AV + "test_no_valid_pair_logs_no_placeholder_accuracy"
CHOICES = [
    Choice(
        "discriminator update: score regulariser",
        "¼ of the mean squared scores over every micro-batch sample, format-invalid students included",
        "over the (teacher, rollout) pairs the loss uses: an invalid rollout has no score to hold near 0 "
        "(it is scored 0 and floored in the advantage), so it trains nothing",
        (SURROGATE, CO + "test_alignment_discriminator_loss_clips_scores_and_regularises"),
    ),
    Choice(
        "discriminator update: truncated rollouts",
        "every format-valid rollout is a negative",
        "a format-valid rollout cut by the length budget is left out: its reasoning has no end, so against a "
        "whole teacher it would teach the discriminator length, not content",
        (NO_PAIR,),
    ),
    Choice(
        "discriminator update: nothing valid",
        "a teacher-only term (0.01 × −log σ(mean teacher score)) keeps a graph on every rank",
        "the update is skipped: the pair count is the driver's, so every rank skips together and no "
        "collective waits; the step logs `prism/disc/pairs` = 0",
        (NO_PAIR,),
    ),
    Choice(
        "discriminator update: averaging",
        "per-micro-batch means scaled by micro / mini batch (dynamic batching)",
        "the exact mean over the step's pairs, whatever verl's micro-batches and ranks: the loss does not "
        "depend on how the rows are split",
        (SURROGATE,),
    ),
    Choice(
        "group normalisation of a singleton group",
        "mean 0, std 1: x / (1 + ε)",
        "the same",
        ("tests/test_fidelity.py::test_a_singleton_group_keeps_its_score_as_the_reference_does",),
    ),
    Choice(
        "CPU RL engine: loss aggregation",
        "verl's token-mean over the whole mini-batch",
        "the mean of each prompt group's token-mean (tiny mode only; the verl engine is verl's)",
        (RL + "test_policy_losses_clip_as_each_algorithm_specifies",),
    ),
    Choice(
        "dense-discriminator ablation",
        "a head with a bias, and its own warmup (batch 14, max length 4096, no balance loss)",
        "the MoE recipe's head (no bias) and warmup settings, so the row changes one thing, the backbone; "
        "a dense backbone has no router, so its balance loss is 0",
        ("tests/test_warmup.py::test_the_dense_discriminators_zero_balance_loss_is_on_the_models_device",),
    ),
    Choice(
        "reward: equivalent answers",
        "`reward_model.equivalent_answers` tried beside the ground truth on the math-verify data sources "
        "(math-77k, visual_logic-26k), by math-verify alone; the mm_gad source ignores them",
        "tried beside the ground truth on every data source, by the same rules (math-verify their fallback): "
        "which source the released parquets carry is unverified (§12), and a listed equivalent is correct",
        (
            RW + "test_an_equivalent_answer_of_the_row_counts_as_the_ground_truth",
            RW + "test_preparation_hands_the_reward_the_rows_equivalent_answers",
        ),
    ),
    Choice(
        "evaluation: MathVerse",
        "the rule first (lower-case or letter match), then the judge",
        "lmms-eval's built-in scoring, which is the judge, on the `<answer>` content",
        (LE + "test_each_paper_column_reads_its_configured_task_metric_and_scale",),
    ),
    Choice(
        "evaluation: MathVista",
        "the `mathvista_testmini` group: cot, solution and format prompts, no group score",
        "the `cot` subtask only, the step-by-step prompt the paper's format asks for (config/README.md)",
        (LE + "test_each_paper_column_reads_its_configured_task_metric_and_scale",),
    ),
]


def rows(raw: dict, rendered: dict | None = None) -> list[dict]:
    rendered = renderings(raw) if rendered is None else rendered
    out = []
    for setting in SETTINGS:
        ours, note = read(setting, raw, rendered)
        where = (
            f"{setting.engine}: `{setting.read_as}`{note}"
            if setting.engine
            else "Slurm request (`rules/common.smk`)"
        )
        out.append(
            {
                "setting": setting,
                "ours": ours,
                "config": config_value(raw, setting.key) if setting.key else NOT_SET,
                "where": where,
                "status": status(setting, ours),
            }
        )
    return out


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(raw: dict, table: list[dict] | None = None) -> str:
    table = rows(raw) if table is None else table
    differing = [row for row in table if row["status"] != "same"]
    lines = [
        "# Fidelity: the paper and the authors' scripts beside this reproduction",
        "",
        "Generated by `python -m prism.fidelity` from `config/config.yaml` and what each engine renders from "
        "it;",
        "`tests/test_fidelity.py` regenerates it and fails when a value, a key or a test name drifts. The",
        "reference values are `../shared/docs/method-reference.md`'s (§2.4, §3.7, §4.1-4.3, §6, §7).",
        "",
        f"{len(table)} settings; {len(differing)} differ from the paper or the scripts (status `differs`), "
        f"or follow",
        "one of them where the two disagree (status `paper` / `scripts`), each with its reason.",
        "`–`: the source says nothing. *Ours* is the value where the library reads it; `(verl default)`:",
        "our command leaves verl 0.9.1's default.",
        "",
        "| stage | setting | paper | scripts | ours | config key | read by the library as | tests | status | "
        "why |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table:
        s = row["setting"]
        tests = "<br>".join(f"`{t.removeprefix('tests/')}`" for t in s.tests)
        cells = (
            s.stage,
            s.name,
            fmt(s.paper),
            fmt(s.scripts),
            fmt(row["ours"]),
            f"`{s.key}`" if s.key else "fixed",
            row["where"],
            tests,
            row["status"],
            s.why,
        )
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines += [
        "",
        "## The reference's faults (method-reference §10)",
        "",
        "| fault | our handling | tests that fail if the handling is reverted |",
        "|---|---|---|",
    ]
    for fault in FAULTS:
        tests = "<br>".join(f"`{t.removeprefix('tests/')}`" for t in fault.tests) or "none"
        lines.append(f"| {_cell(fault.name)} | {_cell(fault.handling)} | {tests} |")
    lines += [
        "",
        "## Where our algorithm departs from the reference's code",
        "",
        "| what | the reference | ours, and why | tests that pin ours |",
        "|---|---|---|---|",
    ]
    for choice in CHOICES:
        tests = "<br>".join(f"`{t.removeprefix('tests/')}`" for t in choice.tests)
        lines.append(f"| {_cell(choice.name)} | {_cell(choice.reference)} | {_cell(choice.ours)} | {tests} |")
    return "\n".join(lines) + "\n"


def paper_config() -> dict:
    return copy.deepcopy(yaml.safe_load(CONFIG.read_text()))


def main() -> None:
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(markdown(paper_config()))
    print(f"wrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
