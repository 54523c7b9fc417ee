"""Per-GPU memory of each GPU stage before it is submitted: model states, activations, vLLM's weights and
KV cache, as the engines will run them, against `cluster.gpu_memory_gb`; and host memory per node (offloaded
states, the data the job holds decoded or loaded) against its `mem_mb`.

Figures come from three kinds of source, and every line of the table names its own:
- `deepspeed`: DeepSpeed's ZeRO estimators (`estimate_zero2_model_states_mem_needs`,
  `estimate_zero3_model_states_mem_needs` in deepspeed.runtime.zero), whose arithmetic is mirrored here;
- `vllm`: vLLM's KV-cache arithmetic (2 x layers x kv_heads x head_dim x dtype bytes a token) and its
  start-up rule that one `max_model_len` request must fit in what `gpu_memory_utilization` leaves;
- `estimate`: ours (FSDP states, activations, logits, vLLM's non-KV overhead), from the model's shapes.

Parameter counts are not hand formulas: transformers builds each model on the meta device from its
config.json (the checkpoint's own when it is on disk, else the published figures in PUBLISHED_CONFIGS).
The settings are read from what each engine renders (prism/verl/command.py, prism/eval/lmms.py,
prism/sft/llamafactory.py, prism/discriminator/accelerated.py), so the estimate follows the commands.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

GIB = 1024**3
BF16 = 2

# The config.json fields that decide memory, as published with each model on the Hugging Face Hub (text
# and vision towers; transformers fills the rest with the architecture's defaults). Checked against
# copies of the published configs found with the docs search (derivatives naming the base model):
# Qwen3-VL-4B (unsloth/Qwen3-VL-4B-Instruct), Qwen3-VL-8B (Steinate/Cortex, based on the 8B Instruct),
# Qwen2.5-32B-Instruct (Qwen/Qwen2.5-32B and fine-tunes naming the Instruct model). Qwen3-VL-2B's text
# tower is the Qwen3-1.7B shape its model card names; its vision tower is the 4B's (depth 24, width 1024),
# which sgl-jax's Qwen3-VL vision defaults (out_hidden_size 2048) match: not confirmed field by field.
_QWEN3_VL_SMALL_VISION = {
    "depth": 24,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_heads": 16,
    "patch_size": 16,
    "deepstack_visual_indexes": [5, 11, 17],
}
PUBLISHED_CONFIGS: dict[str, dict] = {
    "Qwen/Qwen3-VL-2B-Instruct": {
        "model_type": "qwen3_vl",
        "tie_word_embeddings": True,
        "text_config": {
            "hidden_size": 2048,
            "intermediate_size": 6144,
            "num_hidden_layers": 28,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "vocab_size": 151936,
            "max_position_embeddings": 262144,
        },
        "vision_config": _QWEN3_VL_SMALL_VISION | {"out_hidden_size": 2048},
    },
    "Qwen/Qwen3-VL-4B-Instruct": {
        "model_type": "qwen3_vl",
        "tie_word_embeddings": True,
        "text_config": {
            "hidden_size": 2560,
            "intermediate_size": 9728,
            "num_hidden_layers": 36,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "vocab_size": 151936,
            "max_position_embeddings": 262144,
        },
        "vision_config": _QWEN3_VL_SMALL_VISION | {"out_hidden_size": 2560},
    },
    "Qwen/Qwen3-VL-8B-Instruct": {
        "model_type": "qwen3_vl",
        "tie_word_embeddings": False,
        "text_config": {
            "hidden_size": 4096,
            "intermediate_size": 12288,
            "num_hidden_layers": 36,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "vocab_size": 151936,
            "max_position_embeddings": 262144,
        },
        "vision_config": {
            "depth": 27,
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_heads": 16,
            "patch_size": 16,
            "out_hidden_size": 4096,
            "deepstack_visual_indexes": [8, 16, 24],
        },
    },
    "Qwen/Qwen2.5-32B-Instruct": {
        "model_type": "qwen2",
        "tie_word_embeddings": False,
        "hidden_size": 5120,
        "intermediate_size": 27648,
        "num_hidden_layers": 64,
        "num_attention_heads": 40,
        "num_key_value_heads": 8,
        "vocab_size": 152064,
        "max_position_embeddings": 32768,
    },
}


@dataclass(frozen=True)
class Architecture:
    """What memory depends on, from a model's config.json and transformers' own modules."""

    params: int
    largest_layer_params: int  # the largest module's own parameters (DeepSpeed's largest_layer_params)
    vision_params: int
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    max_position_embeddings: int
    experts_per_token: int = 1
    source: str = ""

    def kv_bytes_per_token(self, dtype_bytes: int = BF16) -> int:
        """vLLM's KV cache for one token: a key and a value per layer and KV head."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


def _text(config: dict) -> dict:
    return config.get("text_config", config)


def _experts(text_config: dict) -> int:
    """Experts per MoE layer (transformers 5 says num_local_experts where 4.57 said num_experts)."""
    return text_config.get("num_local_experts") or text_config.get("num_experts") or 1


@lru_cache(maxsize=16)
def _from_json(text: str, source: str) -> Architecture:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    config = json.loads(text)
    fields = {k: v for k, v in config.items() if k not in ("model_type", "architectures", "auto_map")}
    hf_config = AutoConfig.for_model(config["model_type"], **fields)
    loader = AutoModelForImageTextToText if "vision_config" in config else AutoModelForCausalLM
    with torch.device("meta"):
        model = loader.from_config(hf_config)
    visual = next((m for name, m in model.named_modules() if name.endswith("visual")), None)
    text_cfg = _text(config)
    heads = text_cfg["num_attention_heads"]
    return Architecture(
        params=sum(p.numel() for p in model.parameters()),
        largest_layer_params=max(
            sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()
        ),
        vision_params=sum(p.numel() for p in visual.parameters()) if visual is not None else 0,
        layers=text_cfg["num_hidden_layers"],
        hidden=text_cfg["hidden_size"],
        heads=heads,
        kv_heads=text_cfg.get("num_key_value_heads", heads),
        head_dim=text_cfg.get("head_dim") or text_cfg["hidden_size"] // heads,
        intermediate=text_cfg.get("moe_intermediate_size") or text_cfg["intermediate_size"],
        vocab=text_cfg["vocab_size"],
        max_position_embeddings=text_cfg.get("max_position_embeddings", 32768),
        experts_per_token=text_cfg.get("num_experts_per_tok", 1) if _experts(text_cfg) > 1 else 1,
        source=source,
    )


def model_config_json(model, checkpoint: Path | None) -> tuple[dict, str]:
    """A model's config.json: the checkpoint's own when it is on disk, else the published figures."""
    if checkpoint is not None and (checkpoint / "config.json").is_file():
        return json.loads((checkpoint / "config.json").read_text()), str(checkpoint / "config.json")
    if model.source == "hf" and model.hf.repo in PUBLISHED_CONFIGS:
        return PUBLISHED_CONFIGS[model.hf.repo], f"published config of {model.hf.repo}"
    if model.source == "tiny":
        from prism.data.tiny import build_tokenizer, dense_config

        config = dense_config(model.tiny, build_tokenizer()).to_dict()
        return config, "tiny model spec"
    raise KeyError(f"no config.json on disk and no published figures for {model.hf.repo}")


def architecture(config: dict, source: str) -> Architecture:
    return _from_json(json.dumps(config, sort_keys=True), source)


def upcycled(dense: dict, num_experts: int, top_k: int) -> dict:
    """The MoE config sparse upcycling builds from a dense one (prism/discriminator/upcycle.py)."""
    from transformers import AutoConfig

    from prism.discriminator.upcycle import moe_config

    fields = {k: v for k, v in dense.items() if k != "model_type"}
    hf_dense = AutoConfig.for_model(dense["model_type"], **fields)
    return moe_config(hf_dense, num_experts, top_k, 0.0).to_dict()


# -- model states -------------------------------------------------------------------------------------


def zero2_model_states(
    params: int, gpus_per_node: int, nodes: int, cpu_offload: bool, buffer_factor: float = 1.5
) -> tuple[float, float]:
    """(GPU, CPU) bytes of DeepSpeed ZeRO-2's model states, as its estimator computes them (DeepSpeed
    0.19.8, deepspeed/runtime/zero/stage_1_and_2.py, estimate_zero2_model_states_mem_needs): bf16
    parameters whole, and bf16 + fp32 gradients, fp32 master weights and Adam's moments sharded."""
    total_gpus = nodes * gpus_per_node
    if cpu_offload:
        return 2 * params, params * max(4 * total_gpus, 16) * buffer_factor
    return 2 * params + int(18 * params / total_gpus), params * 4 * gpus_per_node * buffer_factor


def zero3_model_states(
    params: int,
    largest_layer_params: int,
    gpus_per_node: int,
    nodes: int,
    cpu_offload: bool,
    cpu_offload_params: bool,
    zero_init: bool = True,
    buffer_factor: float = 1.5,
) -> tuple[float, float]:
    """(GPU, CPU) bytes of DeepSpeed ZeRO-3's model states, as its estimator computes them (DeepSpeed
    0.19.8, deepspeed/runtime/zero/stage3.py, estimate_zero3_model_states_mem_needs)."""
    total_gpus = nodes * gpus_per_node
    gpus_factor = 1 / nodes
    largest_layer = 4 * largest_layer_params
    if cpu_offload:
        per_param = 18 if cpu_offload_params else 16
        gpu = largest_layer if cpu_offload_params else largest_layer + int(2 * params / total_gpus)
        if zero_init:
            return gpu, params * per_param * gpus_factor * buffer_factor
        return gpu, params * max(4 * gpus_per_node, per_param * gpus_factor) * buffer_factor
    gpu = largest_layer + int(18 * params / total_gpus)
    if zero_init:
        return gpu, largest_layer_params * 4 * gpus_per_node * buffer_factor
    return gpu, params * 4 * gpus_per_node * buffer_factor


def fsdp_model_states(arch: Architecture, shards: int) -> float:
    """Bytes of an FSDP-sharded trainer during its update (our estimate): verl keeps fp32 parameters,
    gradients and Adam's two moments (16 bytes a parameter) sharded over the GPUs, and loads them back
    from the CPU for the update when offloaded; one layer is gathered unsharded in bf16 at a time, the
    next prefetched."""
    return 16 * arch.params / shards + 2 * BF16 * arch.largest_layer_params


# -- activations -----------------------------------------------------------------------------------------


def activation_bytes(arch: Architecture, tokens: int, checkpointing: bool) -> float:
    """Bytes a training forward keeps for backward over `tokens` tokens (our estimate, bf16, flash
    attention so no seq x seq term): per layer the norm inputs and outputs, q, k, v, the attention output,
    and the MLP's gate, up, activation and product for each expert a token is routed to. With gradient
    checkpointing only each layer's input is kept, plus one layer recomputed at a time."""
    per_layer = BF16 * (
        5 * arch.hidden
        + 2 * arch.heads * arch.head_dim
        + 2 * arch.kv_heads * arch.head_dim
        + 4 * arch.intermediate * arch.experts_per_token
    )
    if checkpointing:
        return tokens * (arch.layers * BF16 * arch.hidden + per_layer)
    return tokens * arch.layers * per_layer


def logits_bytes(arch: Architecture, tokens: int, training: bool) -> float:
    """The LM head's output over `tokens` (our estimate): bf16 logits and their fp32 upcast for the log-
    softmax; in training also the fp32 gradient."""
    return tokens * arch.vocab * (BF16 + 4 + (4 if training else 0))


# -- vLLM ------------------------------------------------------------------------------------------------

CUDA_GRAPHS_GIB = 2.0  # our estimate of what vLLM's captured CUDA graphs hold, without --enforce-eager
NON_TORCH_GIB = 0.5  # NCCL and CUDA context buffers vLLM counts against its share (our estimate)


@dataclass(frozen=True)
class VllmMemory:
    budget: float  # bytes vLLM may use: gpu_memory_utilization x the GPU
    weights: float
    overhead: float  # profiled activations, sampler, CUDA graphs, non-torch memory
    kv_per_token: int
    max_model_len: int

    @property
    def kv_available(self) -> float:
        return self.budget - self.weights - self.overhead

    @property
    def kv_one_request(self) -> float:
        return self.max_model_len * self.kv_per_token

    @property
    def starts(self) -> bool:
        """vLLM refuses to start when one max_model_len request's KV cache does not fit."""
        return self.kv_available >= self.kv_one_request

    @property
    def sequences_at_full_length(self) -> int:
        return max(0, int(self.kv_available // self.kv_one_request))


def vllm_memory(
    arch: Architecture,
    gpu_bytes: float,
    utilization: float,
    max_model_len: int | None,
    max_num_batched_tokens: int,
    enforce_eager: bool,
    tensor_parallel: int = 1,
    max_num_seqs: int = 256,
) -> VllmMemory:
    """vLLM's share of one GPU at start-up: weights (bf16, split over tensor_parallel), the profiled
    forward at max_num_batched_tokens and the sampler's logits (our estimate), and the KV cache left."""
    activations = max_num_batched_tokens * BF16 * (4 * arch.hidden + 2 * arch.intermediate)
    sampler = max_num_seqs * arch.vocab * 4
    overhead = activations + sampler + NON_TORCH_GIB * GIB + (0 if enforce_eager else CUDA_GRAPHS_GIB * GIB)
    return VllmMemory(
        budget=utilization * gpu_bytes,
        weights=BF16 * arch.params / tensor_parallel,
        overhead=overhead,
        kv_per_token=arch.kv_bytes_per_token() // tensor_parallel,
        max_model_len=max_model_len or arch.max_position_embeddings,
    )


# -- stages -----------------------------------------------------------------------------------------------


@dataclass
class StageMemory:
    """One job's estimate: the per-GPU peak, its parts (name -> (bytes, source)), host memory, problems."""

    rule: str
    model: str
    gpu_bytes: float
    parts: dict[str, tuple[float, str]] = field(default_factory=dict)
    host_bytes: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return not self.problems


def _gpu_check(stage: StageMemory, capacity: float, what_to_change: str) -> None:
    if stage.gpu_bytes > capacity:
        stage.problems.append(
            f"{stage.rule} ({stage.model}): needs about {stage.gpu_bytes / GIB:.1f} GiB per GPU, more than "
            f"cluster.gpu_memory_gb={capacity / GIB:g}; {what_to_change}"
        )


def _vllm_check(stage: StageMemory, vllm: VllmMemory, where: str, what_to_change: str) -> None:
    if vllm.kv_available <= 0:
        stage.problems.append(
            f"{stage.rule} ({stage.model}): vLLM's share ({where}) of {vllm.budget / GIB:.1f} GiB does not "
            f"hold its {vllm.weights / GIB:.1f} GiB of weights and {vllm.overhead / GIB:.1f} GiB of "
            f"start-up overhead; {what_to_change}"
        )
    elif not vllm.starts:
        stage.problems.append(
            f"{stage.rule} ({stage.model}): vLLM will refuse to start: {where} leaves "
            f"{vllm.kv_available / GIB:.1f} GiB of KV cache but one max_model_len={vllm.max_model_len} "
            f"request needs {vllm.kv_one_request / GIB:.1f} GiB; {what_to_change}"
        )


def _add_vllm_parts(stage: StageMemory, prefix: str, vllm: VllmMemory) -> None:
    stage.parts |= {
        f"{prefix} share (gpu_memory_utilization)": (vllm.budget, "vllm"),
        f"{prefix} weights": (vllm.weights, "estimate"),
        f"{prefix} start-up overhead": (vllm.overhead, "estimate"),
        f"{prefix} KV cache left": (vllm.kv_available, "vllm"),
        f"{prefix} KV of one max_model_len={vllm.max_model_len} request": (vllm.kv_one_request, "vllm"),
    }


@dataclass(frozen=True)
class Job:
    """What an estimate needs of one planned job: its rule, model, allocation and host memory."""

    rule: str
    wildcards: dict
    gpus: int
    nodes: int
    mem_mb: int


# Where a rendered verl command sets the discriminator's token budget: the V1 trainer sizes the critic
# engine's micro-batches from ppo_infer_max_token_len_per_gpu (default 32768); older renderings used
# ppo_max_token_len_per_gpu.
CRITIC_TOKEN_BUDGET = (
    "+critic.ppo_infer_max_token_len_per_gpu",
    "critic.ppo_infer_max_token_len_per_gpu",
    "critic.ppo_max_token_len_per_gpu",
)


def verl_stage(
    stage: StageMemory,
    settings: dict,
    policy: Architecture,
    critic: Architecture | None,
    job: Job,
    capacity: float,
    where: str,
) -> None:
    """A verl job: trainer(s) and vLLM colocated on every GPU, as verl's one resource pool runs them.
    With offload the trainers sit on the CPU while vLLM generates, and vLLM frees its weights and KV
    cache (free_cache_engine) while they train; without it their sharded states stay on the GPU."""
    rollout = "actor_rollout_ref.rollout."
    actor = "actor_rollout_ref.actor."
    shards = job.gpus
    checkpointing = bool(settings["actor_rollout_ref.model.enable_gradient_checkpointing"])
    vllm = vllm_memory(
        policy,
        capacity,
        float(settings[rollout + "gpu_memory_utilization"]),
        settings.get(rollout + "max_model_len"),
        int(settings[rollout + "max_num_batched_tokens"]),
        bool(settings.get(rollout + "enforce_eager", False)),  # verl 0.9.1's default: CUDA graphs
        int(settings[rollout + "tensor_model_parallel_size"]),
    )
    _add_vllm_parts(stage, "rollout vLLM", vllm)
    train_tokens = int(settings[actor + "ppo_max_token_len_per_gpu"])
    log_prob_tokens = int(settings[rollout + "log_prob_max_token_len_per_gpu"])
    actor_states = fsdp_model_states(policy, shards)
    actor_update = (
        actor_states
        + activation_bytes(policy, train_tokens, checkpointing)
        + logits_bytes(policy, train_tokens, training=True)
    )
    log_prob = BF16 * policy.params / shards + logits_bytes(policy, log_prob_tokens, training=False)
    stage.parts |= {
        f"actor FSDP states ({shards} shards)": (actor_states, "estimate"),
        f"actor activations, {train_tokens} tokens, checkpointing {'on' if checkpointing else 'off'}": (
            activation_bytes(policy, train_tokens, checkpointing),
            "estimate",
        ),
        f"actor logits, {train_tokens} tokens": (logits_bytes(policy, train_tokens, True), "estimate"),
        "actor update peak": (actor_update, "estimate"),
        f"log-prob pass peak, {log_prob_tokens} tokens": (log_prob, "estimate"),
    }
    phases = [actor_update, log_prob]
    resident = 0.0 if settings[actor + "fsdp_config.param_offload"] else actor_states
    host = actor_states * shards if settings[actor + "fsdp_config.param_offload"] else 0.0
    if critic is not None:
        critic_tokens = int(next((settings[key] for key in CRITIC_TOKEN_BUDGET if key in settings), 32768))
        critic_ckpt = bool(settings["critic.model.enable_gradient_checkpointing"])
        critic_states = fsdp_model_states(critic, shards)
        critic_update = critic_states + activation_bytes(critic, critic_tokens, critic_ckpt)
        stage.parts |= {
            f"discriminator FSDP states ({shards} shards)": (critic_states, "estimate"),
            f"discriminator update peak, {critic_tokens} tokens": (critic_update, "estimate"),
        }
        phases.append(critic_update)
        resident += 0.0 if settings["critic.fsdp.param_offload"] else critic_states
        host += critic_states * shards if settings["critic.fsdp.param_offload"] else 0.0
    rollout_phase = vllm.budget + resident
    stage.parts["rollout phase (vLLM share + trainer states kept on the GPU)"] = (rollout_phase, "estimate")
    stage.gpu_bytes = max(rollout_phase, *phases)
    # offloaded states of the node's ranks, and vLLM's weights parked on the CPU while the trainers run
    stage.host_bytes = host / job.nodes + vllm.weights * shards / job.nodes
    stage.parts["host: offloaded states and parked vLLM weights, per node"] = (stage.host_bytes, "estimate")
    if settings.get(rollout + "max_model_len"):
        bound = (
            f"raise {where}.verl.rollout_gpu_memory_utilization or shorten {where}.max_prompt_length + "
            "max_response_length (verl's rollout.max_model_len)"
        )
    else:
        bound = (
            f"bound {where}.max_prompt_length + max_response_length (verl's rollout.max_model_len) or raise "
            f"{where}.verl.rollout_gpu_memory_utilization"
        )
    _vllm_check(stage, vllm, f"{where}.verl.rollout_gpu_memory_utilization={vllm.budget / capacity:g}", bound)
    _gpu_check(
        stage,
        capacity,
        f"lower {where}.verl.ppo_max_token_len_per_gpu / log_prob_max_token_len_per_gpu, turn on "
        f"{where}.verl.gradient_checkpointing and offload, or use more GPUs",
    )


def deepspeed_settings(config_file: Path) -> tuple[int, bool, bool]:
    """(ZeRO stage, optimizer offloaded, parameters offloaded) of a DeepSpeed config file."""
    zero = json.loads(config_file.read_text()).get("zero_optimization", {})

    def offloaded(key: str) -> bool:
        return zero.get(key, {}).get("device", "none") not in ("none", None)

    return int(zero.get("stage", 0)), offloaded("offload_optimizer"), offloaded("offload_param")


def deepspeed_stage(
    stage: StageMemory,
    arch: Architecture,
    config_file: Path,
    job: Job,
    tokens: int,
    checkpointing: bool,
    lm_logits: bool,
    capacity: float,
    what_to_change: str,
) -> None:
    """A DeepSpeed job: ZeRO-2 or ZeRO-3 model states by DeepSpeed's estimators, plus activations."""
    zero_stage, offload_optimizer, offload_params = deepspeed_settings(config_file)
    per_node = job.gpus // job.nodes
    if zero_stage == 3:
        gpu, cpu = zero3_model_states(
            arch.params, arch.largest_layer_params, per_node, job.nodes, offload_optimizer, offload_params
        )
    else:
        gpu, cpu = zero2_model_states(arch.params, per_node, job.nodes, offload_optimizer)
    activations = activation_bytes(arch, tokens, checkpointing)
    logits = logits_bytes(arch, tokens, training=True) if lm_logits else 0.0
    stage.parts |= {
        f"ZeRO-{zero_stage} model states ({config_file.name})": (gpu, "deepspeed"),
        f"activations, {tokens} tokens, checkpointing {'on' if checkpointing else 'off'}": (
            activations,
            "estimate",
        ),
    }
    if lm_logits:
        stage.parts[f"logits, {tokens} tokens"] = (logits, "estimate")
    stage.gpu_bytes = gpu + activations + logits
    stage.host_bytes = cpu
    stage.parts[f"host: ZeRO-{zero_stage} CPU need, per node"] = (cpu, "deepspeed")
    _gpu_check(stage, capacity, what_to_change)


def option(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def evaluation_stage(
    stage: StageMemory, cfg: dict, policy: Architecture, judge: Architecture | None, capacity: float
) -> None:
    """An lmms-eval job: the judge's vLLM server on the first GPU, the policy's vLLM on each other one."""
    from prism.eval.lmms import judge_command, lmms_eval_command

    benchmark = cfg["benchmarks"][0]
    command = lmms_eval_command(
        cfg, Path("model"), cfg["scoring"][benchmark]["tasks"], Path("tasks"), Path("t"), Path("out"), 1
    )
    model_args = dict(arg.split("=", 1) for arg in option(command, "--model_args").split(","))
    tensor_parallel = int(model_args.get("tensor_parallel_size", 1))
    policy_vllm = vllm_memory(
        policy,
        capacity,
        float(model_args["gpu_memory_utilization"]),
        int(model_args["max_model_len"]) if "max_model_len" in model_args else None,
        16384,  # vLLM's default for the LLM class on a GPU of 70 GiB or more
        model_args.get("enforce_eager") == "True",
        tensor_parallel,
    )
    _add_vllm_parts(stage, "policy vLLM", policy_vllm)
    stage.gpu_bytes = policy_vllm.budget
    _vllm_check(
        stage,
        policy_vllm,
        f"eval.lmms_eval.gpu_memory_utilization={model_args['gpu_memory_utilization']}",
        "bound the policy's max_model_len or raise eval.lmms_eval.gpu_memory_utilization",
    )
    if judge is not None:
        serve = judge_command(Path("judge"), cfg["judge"], 0, "judge")
        judge_vllm = vllm_memory(
            judge,
            capacity,
            float(option(serve, "--gpu-memory-utilization")),
            int(option(serve, "--max-model-len")),
            8192,  # vLLM's default for the OpenAI server on a GPU of 70 GiB or more
            "--enforce-eager" in serve,
        )
        _add_vllm_parts(stage, "judge vLLM (first GPU)", judge_vllm)
        stage.gpu_bytes = max(stage.gpu_bytes, judge_vllm.budget)
        _vllm_check(
            stage,
            judge_vllm,
            f"eval.judge.gpu_memory_utilization={option(serve, '--gpu-memory-utilization')}"
            f"{'' if '--enforce-eager' in serve else ' with CUDA graphs'}",
            "serve the judge without CUDA graphs (--enforce-eager) at a higher "
            "eval.judge.gpu_memory_utilization (the reference used 0.95), or lower eval.judge.max_model_len",
        )
    _gpu_check(stage, capacity, "lower the vLLM gpu_memory_utilization settings below 1")


# -- the data a job holds on the host -------------------------------------------------------------------

# Host bytes of one decoded image per pixel (our estimate): the RGB image (3 bytes) and the Qwen-VL
# processor's float32 pixel_values, which repeat an image over its 2 temporal frames (3 x 2 x 4 bytes).
DECODED_BYTES_PER_PIXEL = 3 + 3 * 2 * 4
# Qwen3-VL's pixels per visual token: 16-pixel patches, merged 2 x 2.
PIXELS_PER_IMAGE_TOKEN = (16 * 2) ** 2
# torch's DataLoader: each worker prepares prefetch_factor (default 2) batches ahead of the one in use.
PREFETCH_FACTOR = 2
# verl 0.9.1's data.dataloader_num_workers (trainer/config/ppo_trainer.yaml), which our commands keep.
VERL_DATALOADER_WORKERS = 8


def batches_in_flight(workers: int) -> int:
    """Batches a DataLoader holds at once: the one in use and those its workers prefetch."""
    return workers * PREFETCH_FACTOR + 1


def decoded_images(count: int, pixels: int) -> float:
    return count * pixels * DECODED_BYTES_PER_PIXEL


def add_data_held(stage: StageMemory, what: str, held: float) -> None:
    """The data a job holds on a node (our estimate) is part of its host need."""
    stage.parts[f"host: {what}, per node"] = (held, "estimate")
    stage.host_bytes += held


# -- the plan's jobs --------------------------------------------------------------------------------------

# Sequences one warmup pair renders: its teacher and its student (prism.discriminator.pairs.sequences).
SEQUENCES_PER_PAIR = 2


class Estimator:
    """Estimates for the planned jobs of one config, models read once."""

    def __init__(self, cfg, workflow_dir: Path):
        self.cfg, self.workflow_dir = cfg, Path(workflow_dir)
        self.capacity = cfg.cluster.gpu_memory_gb * GIB

    def config_json(self, name: str) -> tuple[dict, str]:
        checkpoint = self.workflow_dir / self.cfg.paths.hf_cache / "models" / name
        return model_config_json(self.cfg.models[name], checkpoint)

    def arch(self, name: str) -> Architecture:
        return architecture(*self.config_json(name))

    def discriminator(self, architecture_kind: str) -> tuple[str, Architecture]:
        if architecture_kind == "dense":
            name = self.cfg.ablations.dense_discriminator
            return name, self.arch(name)
        upcycle = self.cfg.discriminator.upcycle
        config, source = self.config_json(self.cfg.discriminator.model)
        moe = upcycled(config, upcycle.num_experts, upcycle.top_k)
        name = f"{self.cfg.discriminator.model} {upcycle.num_experts}x top-{upcycle.top_k}"
        return name, architecture(moe, f"{source}, upcycled")

    def estimate(self, job: Job) -> StageMemory | None:
        """The job's estimate, or None where it holds no GPU or runs the CPU engine."""
        if not job.gpus:
            return None
        rule = job.rule.removesuffix("_ablation").removesuffix("_subset")
        method = getattr(self, f"_{rule}", None)
        stage = method(job) if method else None
        if stage is not None and job.mem_mb and stage.host_bytes > job.mem_mb * 1024**2:
            stage.problems.append(
                f"{stage.rule} ({stage.model}): holds about {stage.host_bytes / GIB:.0f} GiB of host memory "
                f"per node but asks Slurm for mem_mb={job.mem_mb}; raise its resources.mem_mb or offload less"
            )
        return stage

    def _policy_model(self, job: Job) -> str:
        return self.cfg.policy(job.wildcards["policy"]).model

    def _trainer_job(self, job: Job):
        from prism.verl.command import TrainerJob

        here = Path("/")
        return TrainerJob(here, here, here, "plan", job.nodes, job.gpus // job.nodes)

    def _align(self, job: Job) -> StageMemory | None:
        from prism.verl.command import align_settings

        if self.cfg.align.engine != "verl":
            return None
        name = self._policy_model(job)
        disc_kind = "dense" if job.wildcards.get("ablation") == "dense_discriminator" else "moe"
        _, critic = self.discriminator(disc_kind)
        settings = align_settings(self.cfg.align.stage_slice(), self._trainer_job(job), Path("/"))
        stage = StageMemory(job.rule, name, 0.0)
        verl_stage(stage, settings, self.arch(name), critic, job, self.capacity, "align")
        self._verl_data(stage, settings, "align")
        return stage

    def _rl(self, job: Job) -> StageMemory | None:
        from prism.verl.command import rl_settings

        if self.cfg.rl.engine != "verl":
            return None
        name = self._policy_model(job)
        settings = rl_settings(self.cfg.rl.job_slice(job.wildcards["algo"]), self._trainer_job(job))
        stage = StageMemory(job.rule, f"{name} {job.wildcards['algo']}", 0.0)
        verl_stage(stage, settings, self.arch(name), None, job, self.capacity, "rl")
        self._verl_data(stage, settings, "rl")
        return stage

    def _verl_data(self, stage: StageMemory, settings: dict, data_set: str) -> None:
        """On the trainer's node: verl's trainer process builds RLHFDataset twice from the prepared parquet
        (train, and val from the same file), each holding the whole set, counted once the set is prepared;
        its DataLoader's workers decode batches of prompts ahead, an image each, whose visual tokens the
        length filter bounds by max_prompt_length."""
        workers = int(settings.get("data.dataloader_num_workers", VERL_DATALOADER_WORKERS))
        prompts, tokens = int(settings["data.train_batch_size"]), int(settings["data.max_prompt_length"])
        in_flight = batches_in_flight(workers)
        add_data_held(
            stage,
            f"images in flight, {in_flight} batches x {prompts} at <= {tokens} tokens",
            decoded_images(in_flight * prompts, tokens * PIXELS_PER_IMAGE_TOKEN),
        )
        parquet = self.workflow_dir / self.cfg.paths.results / "data" / data_set / "train.parquet"
        if parquet.is_file():
            add_data_held(stage, f"prepared {data_set} set, twice (train, val)", 2 * parquet.stat().st_size)

    def _sft(self, job: Job) -> StageMemory | None:
        from prism.sft.llamafactory import training_yaml

        if self.cfg.sft.engine != "llamafactory":
            return None
        name = self._policy_model(job)
        here = Path("/")
        settings = training_yaml(self.cfg.sft.stage_slice(), here, here, here, None)
        tokens = settings["per_device_train_batch_size"] * settings["cutoff_len"]
        checkpointing = not settings.get("disable_gradient_checkpointing", False)  # LLaMA-Factory's default
        stage = StageMemory(job.rule, name, 0.0)
        deepspeed_stage(
            stage,
            self.arch(name),
            self.workflow_dir / settings["deepspeed"],
            job,
            tokens,
            checkpointing,
            lm_logits=True,
            capacity=self.capacity,
            what_to_change="lower sft.batch_size or sft.max_length (raise sft.grad_accum to keep the batch)",
        )
        # the tokenized set is memory-mapped from the datasets cache; images are decoded per batch by each
        # rank's DataLoader workers
        ranks, batch = job.gpus // job.nodes, settings["per_device_train_batch_size"]
        in_flight, pixels = (
            batches_in_flight(settings["dataloader_num_workers"]),
            settings["image_max_pixels"],
        )
        add_data_held(
            stage,
            f"images in flight, {ranks} ranks x {in_flight} batches x {batch} at {pixels} px",
            ranks * decoded_images(in_flight * batch, pixels),
        )
        return stage

    def _warmup_discriminator(self, job: Job) -> StageMemory | None:
        from prism.discriminator.accelerated import launch_command

        warmup = self.cfg.discriminator.warmup
        if warmup.engine != "accelerate":
            return None
        kind = "dense" if job.rule == "warmup_dense_discriminator" else "moe"
        name, arch = self.discriminator(kind)
        launcher = shlex.split(launch_command(job.gpus, warmup.grad_accum))
        tokens = warmup.batch_size * SEQUENCES_PER_PAIR * warmup.max_length  # padded to the longest
        stage = StageMemory(job.rule, name, 0.0)
        deepspeed_stage(
            stage,
            arch,
            self.workflow_dir / option(launcher, "--deepspeed_config_file"),
            job,
            tokens,
            warmup.gradient_checkpointing,
            lm_logits=False,  # a token-classification head: two scores a token, not the vocabulary
            capacity=self.capacity,
            what_to_change="lower discriminator.warmup.batch_size (raise grad_accum to keep the batch) or "
            "discriminator.warmup.max_length",
        )
        # each rank keeps its lines' byte offsets and decodes one batch's images (prism.discriminator.pairs)
        ranks, images = job.gpus // job.nodes, warmup.batch_size * SEQUENCES_PER_PAIR
        add_data_held(
            stage,
            f"images decoded, {ranks} ranks x {images} at {warmup.max_pixels} px",
            ranks * decoded_images(images, warmup.max_pixels),
        )
        return stage

    def _evaluate(self, job: Job) -> StageMemory | None:
        if self.cfg.eval.engine != "lmms_eval":
            return None
        name = self._policy_model(job)
        benchmark = job.wildcards.get("benchmark")
        cfg = self.cfg.eval.stage_slice([benchmark] if benchmark else None)
        # the rules' own test of whether the job serves a judge
        judge_served = self.cfg.eval.needs_judge([benchmark] if benchmark else None)
        judge = self.arch(self.cfg.eval.judge.model) if judge_served else None
        stage = StageMemory(job.rule, f"{name} {benchmark}" if benchmark else name, 0.0)
        evaluation_stage(stage, cfg, self.arch(name), judge, self.capacity)
        return stage

    _evaluate_benchmark = _evaluate


def estimates(cfg, workflow_dir: Path, jobs) -> list[StageMemory]:
    """One estimate per distinct figure of the planned jobs: jobs that differ only in data or
    initialisation share one, and RL algorithms or benchmarks with the same figures share a line
    (`grpo/dapo`)."""
    estimator, distinct = Estimator(cfg, workflow_dir), {}
    for planned in jobs:
        job = Job(planned.rule, planned.wildcards, planned.gpus, planned.nodes, planned.mem_mb)
        stage = estimator.estimate(job)
        if stage is None:
            continue
        base, _, variant = stage.model.partition(" ")
        figures = tuple((part, round(value)) for part, (value, _) in stage.parts.items())
        key = (stage.rule, base, figures)
        if key not in distinct:
            distinct[key] = stage
        elif variant and variant not in distinct[key].model.split(" ", 1)[1].split("/"):
            kept, label = distinct[key], distinct[key].model
            kept.model = f"{label}/{variant}"
            kept.problems = [p.replace(f"({label})", f"({kept.model})") for p in kept.problems]
    return list(distinct.values())


def table(stages: list[StageMemory], capacity_gib: float, mem_mb: dict[str, int]) -> str:
    """The memory table: each stage's per-GPU peak and host need, then its parts with their sources."""
    from prism.cluster.plan import STAGE_ORDER

    lines = [
        f"GPU memory per GPU against cluster.gpu_memory_gb={capacity_gib:g} (GiB; sources: deepspeed = "
        "DeepSpeed's ZeRO estimators, vllm = vLLM's KV-cache arithmetic, estimate = ours)",
    ]
    order = {rule: i for i, rule in enumerate(STAGE_ORDER)}
    for stage in sorted(stages, key=lambda s: order.get(s.rule, len(order))):
        mark = "fits" if stage.fits else "DOES NOT FIT"
        host = stage.host_bytes / GIB
        lines.append(
            f"{stage.rule} ({stage.model}): {stage.gpu_bytes / GIB:.1f} GiB per GPU  {mark}; host "
            f"{host:.0f} GiB of mem_mb {mem_mb.get(stage.rule, 0) / 1024:.0f} GiB"
        )
        for part, (value, source) in stage.parts.items():
            lines.append(f"    {part:<72}{value / GIB:>8.1f}  {source}")
        lines += [f"    ! {problem}" for problem in stage.problems]
    return "\n".join(lines)


# -- calibration: what a finished run recorded --------------------------------------------------------


@dataclass
class Measured:
    """A rule's records in a finished run: Snakemake's benchmark files, the peak GPU memory verl logs
    (perf/max_memory_allocated_gb in the run's metrics.csv), and the peaks an engine writes in its
    manifest (`metrics.peak_memory`): per rank, GPU memory torch allocated, or the rank's host RSS where no
    GPU ran; for an evaluation, NVML's memory in use per GPU while vLLM ran (every process's, so not
    comparable with torch's allocated figure), or its largest child process's host RSS."""

    jobs: int = 0
    hours: float = 0.0  # the longest job's wall time
    max_rss_mb: float = 0.0
    gpu_peak_gib: float | None = None  # torch's allocated peak
    gpu_used_gib: float | None = None  # NVML's in-use peak
    rank_rss_gib: float | None = None  # the largest rank's (or evaluation child's) host peak


def read_benchmark(path: Path) -> tuple[float, float]:
    """(wall seconds, max RSS in MB) of a Snakemake benchmark file (the longest of its repeats)."""
    import csv

    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    wall = max(float(row["s"]) for row in rows)
    rss = max((float(row["max_rss"]) for row in rows if row["max_rss"] not in ("", "NA", "-")), default=0.0)
    return wall, rss


def gpu_peak(metrics_csv: Path) -> float | None:
    import csv

    if not metrics_csv.is_file():
        return None
    with open(metrics_csv, newline="") as handle:
        values = [row.get("perf/max_memory_allocated_gb") for row in csv.DictReader(handle)]
    peaks = [float(v) for v in values if v not in (None, "")]
    return max(peaks) if peaks else None


def calibration(jobs, run_dir: Path) -> dict[str, Measured]:
    """Per rule, what the run in `run_dir` (its workflow directory) recorded for the planned jobs."""
    measured: dict[str, Measured] = {}
    for job in jobs:
        record = run_dir / job.benchmark if job.benchmark else None
        if record is None or not record.is_file():
            continue
        wall, rss = read_benchmark(record)
        entry = measured.setdefault(job.rule, Measured())
        entry.jobs += 1
        entry.hours = max(entry.hours, wall / 3600)
        entry.max_rss_mb = max(entry.max_rss_mb, rss)
        for output in job.outputs:
            peaks = manifest_peaks(run_dir / Path(output).parent / "manifest.json")
            logged = gpu_peak(run_dir / Path(output).parent / "metrics.csv")
            peak = max([*peaks["gpu"], *([] if logged is None else [logged])], default=None)
            if peak is not None:
                entry.gpu_peak_gib = max(entry.gpu_peak_gib or 0.0, peak)
            if peaks["gpu_used"]:
                entry.gpu_used_gib = max(entry.gpu_used_gib or 0.0, *peaks["gpu_used"])
            if peaks["host"]:
                entry.rank_rss_gib = max(entry.rank_rss_gib or 0.0, *peaks["host"])
    return measured


def manifest_peaks(manifest: Path) -> dict[str, list[float]]:
    """The peaks a stage recorded in its manifest: GPU memory torch allocated (per rank), NVML's memory in
    use (per GPU), and one process's host RSS (per rank, or an evaluation's largest child)."""
    recorded = {}
    if manifest.is_file():
        recorded = json.loads(manifest.read_text()).get("metrics", {}).get("peak_memory") or {}
    return {
        "gpu": recorded.get("gpu_allocated_gib", []),
        "gpu_used": recorded.get("gpu_used_gib", []),
        "host": recorded.get("host_rss_gib", []) + recorded.get("child_rss_gib", []),
    }


def calibration_table(jobs, measured: dict[str, Measured], stages: list[StageMemory]) -> str:
    """Measured hours, max RSS and GPU peak beside the plan's hours, mem_mb and estimates."""
    lines = [
        f"{'stage':<32}{'measured':>9}{'h/job':>8}{'planned':>9}{'max RSS GiB':>13}{'mem_mb GiB':>12}"
        f"{'GPU peak GiB':>14}{'GPU used GiB':>14}{'estimate':>10}{'rank RSS GiB':>14}"
    ]
    for rule, entry in measured.items():
        planned = [j for j in jobs if j.rule == rule]
        estimate = [s.gpu_bytes / GIB for s in stages if s.rule == rule]
        peak = f"{entry.gpu_peak_gib:.1f}" if entry.gpu_peak_gib is not None else "-"
        used = f"{entry.gpu_used_gib:.1f}" if entry.gpu_used_gib is not None else "-"
        rank_rss = f"{entry.rank_rss_gib:.2f}" if entry.rank_rss_gib is not None else "-"
        lines.append(
            f"{rule:<32}{entry.jobs:>4}/{len(planned):<4}{entry.hours:>8.2f}{planned[0].hours:>9.2f}"
            f"{entry.max_rss_mb / 1024:>13.2f}{planned[0].mem_mb / 1024:>12.1f}{peak:>14}{used:>14}"
            f"{max(estimate) if estimate else float('nan'):>10.1f}{rank_rss:>14}"
        )
    return "\n".join(lines)
