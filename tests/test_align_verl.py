"""The verl engine of Stage 2 on CPU: its config, the discriminator batch logic and the native model class.

What needs verl's GPU trainer (TransferQueue, Ray workers, FSDP) is not run here; every pure piece it uses is.
"""

import copy

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForTokenClassification
from verl.utils import tensordict_utils as tu

from prism.core.advantages import prism_advantage
from prism.core.losses import alignment_discriminator_loss
from prism.core.modeling import chat_text, encode, load_model, load_processor
from prism.core.prompts import prompt_messages
from prism.core.segments import parse_response
from prism.data import synthetic
from prism.discriminator.model import Discriminator, DiscriminatorError, render
from prism.discriminator.upcycle import save_upstream_layout, upcycle
from prism.verl import align, models
from prism.verl.align_batch import (
    assistant_turn_end_ids,
    discriminator_metrics,
    discriminator_prompt,
    discriminator_reward,
    discriminator_tensordict,
    group_index,
    last_token_values,
    on_every_token,
    on_last_token,
    per_sample,
    rollout_advantage,
    segment_row,
    surrogate_coefficients,
    surrogate_loss,
)


@pytest.fixture(scope="module")
def example():
    return synthetic.examples(1, seed=5)[0]


@pytest.fixture(scope="module")
def composed(disc_dir):
    overrides = [f"critic.model.path={disc_dir}", "prism.alpha=0.3", "actor_rollout_ref.rollout.n=16"]
    with initialize_config_dir(config_dir=str(align.CONFIG_DIR), version_base=None):
        return compose(align.CONFIG_NAME, overrides=overrides)


# ---- (a) the entry point imports on CPU and its config composes with verl 0.9.1's tree ----


def test_prism_align_config_composes_with_verl_and_carries_the_prism_block(composed):
    assert composed.critic.enable is True
    assert composed.critic.model.external_lib == models.__name__
    assert dict(composed.prism) == {
        "alpha": 0.3,
        "format_penalty": 1.5,
        "score_clip": 10.0,
        "score_reg_coef": 0.001,
        "teacher_caption_field": "teacher_caption",
        "teacher_reasoning_field": "teacher_cot",
    }
    # verl's own tree is underneath: its defaults, and overrides reach into it
    assert composed.actor_rollout_ref.rollout.n == 16
    assert composed.critic.optim.lr == 1e-5
    assert composed.reward.custom_reward_function.path == "pkg://prism.verl.reward"
    assert (composed.trainer.use_v1, composed.trainer.v1.trainer_mode) == (True, "sync")
    align.check_config(composed)


WORKER_ENV = "ray_kwargs.ray_init.runtime_env.env_vars"


@pytest.mark.parametrize(
    ("key", "value", "error", "match"),
    [
        ("critic.enable", False, ValueError, "critic.enable"),
        ("critic.model.external_lib", None, ValueError, "external_lib"),
        (
            "ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES",
            "",
            ValueError,
            "critic worker",
        ),
        ("trainer.v1.trainer_mode", "separate_async", ValueError, "sync"),
        ("critic.model.path", "TINY", DiscriminatorError, "not a discriminator checkpoint"),
    ],
)
def test_check_config_refuses_what_would_not_train_prism(composed, tiny_dir, key, value, error, match):
    config = copy.deepcopy(composed)
    OmegaConf.update(config, key, str(tiny_dir) if value == "TINY" else value)
    with pytest.raises(error, match=match):
        align.check_config(config)


# ---- (b) the per-sequence surrogate has exactly the gradient of our alignment loss ----


def test_surrogate_loss_has_the_gradient_of_the_alignment_loss_over_data_parallel_ranks():
    torch.manual_seed(0)
    clip, reg = 10.0, 0.001
    teacher_of_pair = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    groups, pairs = 3, len(teacher_of_pair)
    raw = {
        "s_cap": torch.randn(pairs) * 4,
        "s_rea": torch.randn(pairs) * 4,
        "t_cap": torch.randn(groups) * 4,
        "t_rea": torch.randn(groups) * 4,
    }
    raw["t_cap"][1] = 12.0  # clipped: no gradient
    raw["s_rea"][2] = -10.5  # clipped
    raw["s_cap"][3] = 10.0  # on the clip: still a gradient, as torch.clamp gives it

    leaves = {name: scores.clone().requires_grad_() for name, scores in raw.items()}
    tp = teacher_of_pair
    loss = alignment_discriminator_loss(
        leaves["t_cap"][tp], leaves["t_rea"][tp], leaves["s_cap"], leaves["s_rea"], clip, reg
    )["loss"]
    loss.backward()
    order = ("s_cap", "s_rea", "t_cap", "t_rea")
    expected = torch.cat([leaves[name].grad for name in order])

    t_cap, s_cap = surrogate_coefficients(raw["t_cap"], raw["s_cap"], tp, clip, reg)
    t_rea, s_rea = surrogate_coefficients(raw["t_rea"], raw["s_rea"], tp, clip, reg)
    rows = [
        segment_row(torch.arange(3 + i % 4), torch.arange(3 + i % 4), [7] * (1 + i % 3), {})
        for i in range(2 * pairs + 2 * groups)
    ]
    dp_size = 7
    batch = discriminator_tensordict(rows, torch.cat([s_cap, s_rea, t_cap, t_rea]), dp_size)
    assert len(batch) == 28 and len(batch) > len(rows)  # padded with zero-coefficient rows

    # each rank scores its share; verl averages the ranks' gradients
    scores = torch.cat([raw[name] for name in order] + [torch.full((len(batch) - len(rows),), 3.0)])
    scores.requires_grad_()
    lengths = batch["input_ids"].offsets().diff().tolist()
    per_rank = len(batch) // dp_size
    total = 0
    for rank in range(dp_size):
        index = list(range(rank * per_rank, (rank + 1) * per_rank))
        shard = tu.index_select_tensor_dict(batch, torch.tensor(index))
        tu.assign_non_tensor(shard, dp_size=dp_size)
        values = torch.nested.as_nested_tensor(
            [torch.cat([torch.randn(lengths[i] - 1), scores[i : i + 1]]) for i in index], layout=torch.jagged
        )
        total = total + surrogate_loss({"values": values}, shard)[0]
    (total / dp_size).backward()

    assert torch.allclose(scores.grad[: len(rows)], expected, atol=1e-7)
    assert torch.all(scores.grad[len(rows) :] == 0)
    assert expected[2 * pairs + 1] == 0 and expected[pairs + 2] == 0 and expected[3] != 0

    measured = discriminator_metrics(
        raw["t_cap"][tp], raw["t_rea"][tp], raw["s_cap"], raw["s_rea"], clip, reg
    )
    assert measured["loss"] == pytest.approx(loss.item())
    assert measured["pairs"] == pairs
    gap = (raw["t_cap"][tp].clamp(-clip, clip) - raw["s_cap"].clamp(-clip, clip)).mean().item()
    assert measured["caption_gap"] == pytest.approx(gap)


# ---- (c) reading scores and rollout fields out of jagged tensors ----


def test_last_token_values_reads_each_sequence_end_of_a_packed_output():
    # as FSDPEngineWithValueHead returns them: one packed row, cut by the sequences' offsets
    lengths = torch.tensor([3, 1, 2])
    packed = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    values = torch.nested.nested_tensor_from_jagged(packed, offsets)
    assert last_token_values(values).tolist() == [3.0, 4.0, 6.0]
    # and after the data-parallel outputs are concatenated on the driver
    merged = tu.concat_tensordict(
        [tu.get_tensordict({"values": values}), tu.get_tensordict({"values": values})]
    )
    assert last_token_values(merged["values"]).tolist() == [3.0, 4.0, 6.0] * 2


def test_per_sample_recovers_token_rows_and_mrope_position_rows():
    positions = [torch.arange(12).reshape(4, 3), torch.arange(20).reshape(4, 5)]
    nested = torch.nested.as_nested_tensor(positions, layout=torch.jagged)
    assert all(torch.equal(a, b) for a, b in zip(per_sample(nested), positions, strict=True))
    tokens = [torch.tensor([5, 6]), torch.tensor([7, 8, 9])]
    assert [t.tolist() for t in per_sample(torch.nested.as_nested_tensor(tokens, layout=torch.jagged))] == [
        [5, 6],
        [7, 8, 9],
    ]


def test_per_sample_survives_the_round_trip_of_a_consolidated_pickled_batch():
    """How a batch crosses a process boundary (TensorDict consolidate + pickle): the ragged dim of 3-D
    position ids loses its index, and padding through it mixes rows of different samples."""
    import pickle

    positions = [torch.arange(12).reshape(4, 3), torch.arange(100, 120).reshape(4, 5)]
    tokens = [torch.tensor([5, 6, 7]), torch.tensor([1, 2, 3, 4, 5])]
    batch = tu.get_tensordict(
        {
            "position_ids": torch.nested.as_nested_tensor(positions, layout=torch.jagged),
            "input_ids": torch.nested.as_nested_tensor(tokens, layout=torch.jagged),
        }
    )
    received = pickle.loads(pickle.dumps(batch.consolidate()))
    assert received["position_ids"]._ragged_idx != batch["position_ids"]._ragged_idx  # what goes wrong
    assert all(
        torch.equal(a, b) for a, b in zip(per_sample(received["position_ids"]), positions, strict=True)
    )
    assert [t.tolist() for t in per_sample(received["input_ids"])] == [t.tolist() for t in tokens]


def test_response_fields_put_scores_on_every_or_the_last_response_token():
    masks = [torch.tensor([1, 1, 0]), torch.tensor([1])]
    assert [r.tolist() for r in per_sample(on_every_token(torch.tensor([2.0, -1.0]), masks))] == [
        [2.0, 2.0, 0.0],
        [-1.0],
    ]
    assert [r.tolist() for r in per_sample(on_last_token(torch.tensor([2.0, -1.0]), masks))] == [
        [0.0, 0.0, 2.0],
        [-1.0],
    ]


def test_advantage_and_reward_come_from_clipped_scores_per_prompt_group():
    group, first = group_index(["b", "a", "b", "a", "b"])
    assert group.tolist() == [0, 1, 0, 1, 0] and first == [0, 1]
    caption = torch.tensor([20.0, 1.0, 0.0, 3.0, 2.0])
    reasoning = torch.tensor([1.0, 2.0, 0.0, -30.0, 4.0])
    valid = torch.tensor([True, True, False, True, True])
    advantage = rollout_advantage(
        caption, reasoning, valid, group, alpha=0.5, format_penalty=1.5, score_clip=10.0
    )
    clipped = prism_advantage(caption.clamp(-10, 10), reasoning.clamp(-10, 10), valid, group, 0.5, 1.5)
    assert torch.allclose(advantage, clipped)
    assert not torch.allclose(advantage, prism_advantage(caption, reasoning, valid, group, 0.5, 1.5))
    assert advantage[2] < -1.5  # off format: floored below its group, then penalised
    reward = discriminator_reward(caption, reasoning, valid, alpha=0.5, score_clip=10.0)
    assert reward.tolist() == pytest.approx([5.5, 1.5, 0.0, -3.5, 3.0])


# ---- (d) the discriminator's sequences are the CPU engine's rendered inputs ----


def test_segment_rows_reproduce_the_cpu_engines_rendering_and_mrope_positions(tiny_dir, example):
    processor, model = load_processor(str(tiny_dir)), load_model(str(tiny_dir))
    tokenizer, rope = processor.tokenizer, model.model.get_rope_index
    image = example.scene.image()
    prompt = encode(processor, [chat_text(processor, prompt_messages(example.question))], [image])
    prompt_ids = prompt["input_ids"][0]
    prompt_rope = rope(prompt["input_ids"], prompt["mm_token_type_ids"], prompt["image_grid_thw"])[0][:, 0]
    # verl's layout for Qwen-VL: text positions, then the three M-RoPE rows
    prompt_positions = torch.cat([torch.arange(len(prompt_ids))[None], prompt_rope])

    end = assistant_turn_end_ids(processor, tokenizer)
    assert end[0] == tokenizer.convert_tokens_to_ids("<|im_end|>") and tokenizer.decode(end) == "<|im_end|>\n"
    teacher = parse_response(example.teacher_response())
    for segment in (teacher.caption, teacher.reasoning):
        segment_ids = tokenizer.encode(segment, add_special_tokens=False) + end
        mm = {"pixel_values": prompt["pixel_values"], "image_grid_thw": prompt["image_grid_thw"]}
        row = segment_row(prompt_ids, prompt_positions, segment_ids, mm)

        rendered = render(processor, [example.question], [image], [segment])
        assert torch.equal(row["input_ids"], rendered["input_ids"][0])
        full_rope = rope(rendered["input_ids"], rendered["mm_token_type_ids"], rendered["image_grid_thw"])[0]
        assert torch.equal(row["position_ids"][0], torch.arange(len(row["input_ids"])))
        assert torch.equal(row["position_ids"][1:], full_rope[:, 0])
        assert row["loss_mask"].tolist() == [0] * len(prompt_ids) + [1] * len(segment_ids)
        assert row["multi_modal_inputs"] is mm


def test_a_text_only_discriminator_scores_the_cpu_engines_text_only_rendering(tiny_dir, example):
    processor, model = load_processor(str(tiny_dir)), load_model(str(tiny_dir))
    tokenizer, image = processor.tokenizer, example.scene.image()
    prompt = encode(processor, [chat_text(processor, prompt_messages(example.question))], [image])
    prompt_ids = prompt["input_ids"]
    rope = model.model.get_rope_index(prompt_ids, prompt["mm_token_type_ids"], prompt["image_grid_thw"])
    prompt_positions = torch.cat([torch.arange(prompt_ids.shape[1])[None], rope[0][:, 0]])
    mm = {"pixel_values": prompt["pixel_values"], "image_grid_thw": prompt["image_grid_thw"]}
    span = tuple(tokenizer.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>"]))

    assert discriminator_prompt(prompt_ids[0], prompt_positions, mm, None)[2] is mm  # sees images
    ids, positions, pixels = discriminator_prompt(prompt_ids[0], prompt_positions, mm, span)
    assert pixels == {} and positions.shape == (4, len(ids))
    segment = parse_response(example.teacher_response()).reasoning
    end = assistant_turn_end_ids(processor, tokenizer)
    segment_ids = tokenizer.encode(segment, add_special_tokens=False) + end
    row = segment_row(ids, positions, segment_ids, pixels)
    rendered = render(processor, [example.question], None, [segment])
    assert torch.equal(row["input_ids"], rendered["input_ids"][0])
    # text positions on all four rows: what the model computes for text-only inputs
    assert (row["position_ids"] == torch.arange(len(row["input_ids"]))).all()


# ---- (e) the native token-classification discriminator loads with its head, or not at all ----


def rendered_inputs(tiny_dir, example):
    processor = load_processor(str(tiny_dir))
    teacher = parse_response(example.teacher_response())
    image = example.scene.image()
    return render(processor, [example.question] * 2, [image] * 2, [teacher.caption, teacher.reasoning])


def load_as_verl_does(path):
    config = AutoConfig.from_pretrained(path)
    config.num_labels, config.classifier_dropout = 1, 0.0  # what verl's FSDP engine sets
    return AutoModelForTokenClassification.from_pretrained(
        pretrained_model_name_or_path=str(path), torch_dtype=torch.float32, config=config
    ).eval()


def test_verl_loads_our_saved_discriminator_natively_with_identical_scores(disc_dir, tiny_dir, example):
    inputs = rendered_inputs(tiny_dir, example)
    native = load_as_verl_does(disc_dir)
    assert isinstance(native, models.PrismQwen3VLForTokenClassification)
    assert not hasattr(native, "v_head")  # verl would take it for trl's wrapper
    with torch.no_grad():
        expected = Discriminator.load(disc_dir).eval()(inputs)
        logits = native(**inputs).logits
    assert logits.shape[-1] == 1
    # left padding: every row's last real token is the last column
    assert torch.allclose(logits[:, -1, 0], expected, atol=1e-6)


def test_the_update_drops_out_the_heads_input_as_the_warmup_saved_it(disc_dir, tiny_dir, example, tmp_path):
    """verl zeroes classifier_dropout; the head's dropout is the discriminator's own (its discriminator.json,
    0.1 where there is none): on in train mode (verl's update), off in eval mode (its scoring)."""
    inputs = rendered_inputs(tiny_dir, example)
    native = load_as_verl_does(disc_dir)
    assert native.dropout.p == Discriminator.load(disc_dir).v_head[0].p == 0.1
    seen = []
    native.dropout.register_forward_hook(lambda module, args, out: seen.append((args[0], out)))
    with torch.no_grad():
        scores = native.eval()(**inputs).logits[:, -1, 0]
        torch.manual_seed(0)
        dropped = native.train()(**inputs).logits[:, -1, 0]
    assert not torch.allclose(dropped, scores)
    (hidden, kept), (train_hidden, train_kept) = seen
    assert torch.equal(kept, hidden)
    zeroed = train_kept == 0
    assert torch.allclose(train_kept, train_hidden * ~zeroed / 0.9)
    assert 0.08 < zeroed[train_hidden != 0].float().mean().item() < 0.12

    for item in disc_dir.iterdir():
        (tmp_path / item.name).write_bytes(item.read_bytes())
    (tmp_path / "discriminator.json").unlink()  # the authors' release: the reference's dropout
    assert load_as_verl_does(tmp_path).dropout.p == 0.1


def test_the_released_moe_layout_loads_with_the_head_from_its_shards(tiny_dir, example, tmp_path):
    inputs = rendered_inputs(tiny_dir, example)
    torch.manual_seed(1)
    moe = upcycle(
        load_model(str(tiny_dir)), 4, 2, noise_std=0.01, router_std=0.02, router_aux_loss_coef=0.01, seed=0
    )
    disc = Discriminator(moe, dropout=0.1).eval()
    save_upstream_layout(moe, tmp_path)  # experts as (E, H, 2I), as the authors' checkpoint stores them
    weights = load_file(tmp_path / "model.safetensors")
    weights["v_head.1.weight"] = disc.v_head[1].weight.detach().clone()
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    native = load_as_verl_does(tmp_path)
    assert isinstance(native, models.PrismQwen3VLMoeForTokenClassification)
    with torch.no_grad():
        assert torch.allclose(native(**inputs).logits[:, -1, 0], disc(inputs), atol=1e-6)


def test_a_headless_or_foreign_headed_checkpoint_is_refused(tiny_dir, disc_dir, tmp_path):
    with pytest.raises(DiscriminatorError, match="not a discriminator checkpoint"):
        load_as_verl_does(tiny_dir)
    for item in disc_dir.iterdir():
        (tmp_path / item.name).write_bytes(item.read_bytes())
    save_file({"v_head.1.weight": torch.zeros(1, 32)}, tmp_path / "value_head.safetensors")
    with pytest.raises(DiscriminatorError, match="belongs to another model"):
        load_as_verl_does(tmp_path)


def test_discriminator_rows_are_spread_over_ranks_by_length():
    """Captions (short) come first, then reasonings (long): verl's contiguous split would give the first
    ranks only captions. The balanced order gives each rank about the same tokens."""
    from prism.verl.align_batch import balanced_order

    lengths = [300 + i for i in range(16)] + [3000 + 7 * i for i in range(16)]
    dp_size = 4
    order = balanced_order(lengths, dp_size)
    assert sorted(order) == list(range(len(lengths)))
    per_rank = len(lengths) // dp_size

    def rank_tokens(rows):
        return [sum(lengths[i] for i in rows[r * per_rank : (r + 1) * per_rank]) for r in range(dp_size)]

    contiguous, balanced = rank_tokens(list(range(len(lengths)))), rank_tokens(order)
    assert max(contiguous) > 5 * min(contiguous)
    assert max(balanced) - min(balanced) <= max(lengths)


class InMemoryTransferQueue:
    """TransferQueue's key-value calls (their signatures and its KVBatchMeta), kept in this process:
    its storage actors do not start on this CPU."""

    def __init__(self):
        self.store = {}

    def kv_batch_put(self, keys, partition_id, fields=None, tags=None, data_parser=None):
        from transfer_queue import KVBatchMeta

        for i, key in enumerate(keys):
            self.store[(partition_id, key)] = tu.index_select_tensor_dict(fields, torch.tensor([i]))
        tags = list(tags) if tags is not None else [{} for _ in keys]
        return KVBatchMeta(keys=list(keys), tags=tags, partition_id=partition_id)

    def kv_batch_get(self, keys, partition_id, select_fields=None):
        rows = [self.store[(partition_id, key)] for key in keys]
        return tu.concat_tensordict([row.select(*select_fields) for row in rows])

    def kv_clear(self, keys, partition_id):
        for key in keys:
            del self.store[(partition_id, key)]


def test_the_trainer_reads_each_rows_score_back_whatever_order_it_sent_them_in(monkeypatch):
    """PrismAlignTrainer's discriminator scoring: rows put in a length-balanced order, scored by the
    critic workers (here: a worker group that scores each row by its last token id), read back in the
    order they were given."""
    from types import SimpleNamespace

    from prism.verl import align_trainer

    queue, sent = InMemoryTransferQueue(), []
    monkeypatch.setattr(align_trainer, "tq", queue)

    def infer_batch(meta):
        batch = queue.kv_batch_get(meta.keys, meta.partition_id, ["input_ids"])
        sent.extend(int(row[-1]) for row in per_sample(batch["input_ids"]))
        values = torch.nested.as_nested_tensor(
            [row.float() for row in per_sample(batch["input_ids"])], layout=torch.jagged
        )
        queue.kv_batch_put(meta.keys, meta.partition_id, tu.get_tensordict({"values": values}))
        return SimpleNamespace(futures=[])

    trainer = align_trainer.PrismAlignTrainer.__new__(align_trainer.PrismAlignTrainer)
    trainer.critic_wg = SimpleNamespace(_dispatch_info={"train": [0, 1, 2, 0, 1, 2]}, infer_batch=infer_batch)
    monkeypatch.setattr(align_trainer.ray, "get", lambda futures: None)
    lengths = [2, 3, 2, 40, 38, 41, 3]  # short captions, long reasonings
    rows = [segment_row(torch.arange(n), torch.arange(n), [100 + i], {}) for i, n in enumerate(lengths)]
    scores = trainer._discriminator_scores(rows)
    assert scores.tolist() == [100.0 + i for i in range(len(rows))]
    assert sent != sorted(sent) and len(sent) == 9  # balanced over 3 ranks, padded to a multiple of 3
    assert not queue.store  # the partition is cleared after reading


def test_no_valid_pair_logs_no_placeholder_accuracy():
    """B13: with every rollout off format (or cut by the length budget), the update logs only its pair
    count, 0, and leaves the discriminator alone; the reference logged an accuracy of 0.92."""
    from types import SimpleNamespace

    from prism.verl import align_trainer

    trainer = align_trainer.PrismAlignTrainer.__new__(align_trainer.PrismAlignTrainer)
    trainer.prism = SimpleNamespace(score_clip=10.0, score_reg_coef=1e-3)
    trainer._discriminator_step = lambda rows, coefficients: pytest.fail(
        "no pair, yet the discriminator trained"
    )
    four = torch.zeros(4)
    trainer.scored = align_trainer.ScoredRollouts(
        rollout_index=[0, 1, 2, 3],
        response_masks=[],
        group=torch.tensor([0, 0, 1, 1]),
        valid=torch.tensor([False, True, False, False]),
        truncated=torch.tensor([False, True, False, False]),
        caption=four,
        reasoning=four,
        teacher_caption=torch.zeros(2),
        teacher_reasoning=torch.zeros(2),
        caption_rows={},
        reasoning_rows={},
        teacher_caption_rows=[],
        teacher_reasoning_rows=[],
    )
    metrics, batch = {}, object()
    assert trainer._update_critic(batch, metrics) is batch
    assert metrics == {"prism/disc/pairs": 0.0}
