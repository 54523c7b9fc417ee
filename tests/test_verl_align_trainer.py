"""PrismAlignTrainer's hooks of verl's step (`_compute_values`, `_compute_advantage`, `_update_critic`)
driven on CPU: a step's rollouts put into TransferQueue (its controller and storage actors on a local Ray
instance) as verl's agent loop lays them out, the critic workers' two calls answered in this process by the
discriminator class verl loads, and what the hooks write back compared with what the CPU engine computes
from the same texts.

verl's worker group is replaced (its TrainingWorker needs CUDA); the trainer, its batch fields,
TransferQueue and the discriminator class are the real ones.
"""

import copy
import os
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from test_verl_models import load_as_verl_does
from verl.utils import tensordict_utils as tu

from prism.core.losses import alignment_discriminator_loss
from prism.core.modeling import chat_text, encode, load_model, load_processor
from prism.core.prompts import prompt_messages
from prism.core.segments import parse_response
from prism.data import synthetic
from prism.discriminator.model import Discriminator, render
from prism.verl import align
from prism.verl.align_batch import (
    COEFFICIENT_KEY,
    assistant_turn_end_ids,
    continue_positions,
    discriminator_reward,
    on_last_token,
    per_sample,
    rollout_advantage,
    surrogate_loss,
)

ROLLOUTS = 2  # per prompt


class InProcessCritic:
    """The two calls the trainer makes on verl's critic worker group, answered by one discriminator in this
    process as two data-parallel ranks would (verl's TrainingWorker: infer_batch writes per-token
    `values` back into TransferQueue; train_mini_batch takes one optimizer step on the loss function)."""

    _dispatch_info = {"train": [0, 1]}

    def __init__(self, model, queue):
        self.model, self.queue, self.trained_rows = model, queue, 0

    def _values(self, meta):
        rows = self.queue.kv_batch_get(
            meta.keys, meta.partition_id, ["input_ids", "position_ids", "multi_modal_inputs"]
        )
        values = []
        for ids, positions, images in zip(
            per_sample(rows["input_ids"]),
            per_sample(rows["position_ids"]),
            rows["multi_modal_inputs"],
            strict=True,
        ):
            logits = self.model(input_ids=ids[None], position_ids=positions[:, None], **images).logits
            values.append(logits[0, :, 0])
        return rows, torch.nested.as_nested_tensor(values, layout=torch.jagged)

    def infer_batch(self, meta):
        with torch.no_grad():
            _, values = self._values(meta)
        self.queue.kv_batch_put(meta.keys, meta.partition_id, tu.get_tensordict({"values": values}))
        return SimpleNamespace(futures=[])

    def train_mini_batch(self, meta):
        _, values = self._values(meta)
        data = self.queue.kv_batch_get(meta.keys, meta.partition_id, [COEFFICIENT_KEY])
        tu.assign_non_tensor(data, dp_size=1)  # one process holds both ranks' rows
        loss, _ = surrogate_loss({"values": values}, data)
        loss.backward()
        self.trained_rows = len(meta)
        return SimpleNamespace(get=lambda: {"metrics": {"grad_norm": [1.0], "lr": [1e-6]}})


@pytest.fixture(scope="module")
def transfer_queue():
    """TransferQueue as verl's task runner starts it (tq.init), on a Ray instance of this process."""
    import ray
    import transfer_queue as tq
    from omegaconf import OmegaConf

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    temp_dir = f"/tmp/ray_prism-tq-{os.getpid()}"
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, _temp_dir=temp_dir)
    try:
        tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
        yield tq
        tq.close()
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def step(tiny_dir, disc_dir):
    """Two prompts with two rollouts each (one on format, one not) and a padding sample, as verl's agent
    loop puts them: prompt and response ids, (4, L) positions, the prompt's pixels, the rule reward."""
    processor, policy = load_processor(str(tiny_dir)), load_model(str(tiny_dir))
    tokenizer = processor.tokenizer
    examples = synthetic.examples(3, seed=11)
    samples = []
    for uid, example in zip(("u0", "u1"), examples[:2], strict=True):
        image = example.scene.image()
        prompt = encode(processor, [chat_text(processor, prompt_messages(example.question))], [image])
        ids = prompt["input_ids"][0]
        rope = policy.model.get_rope_index(ids[None], prompt["mm_token_type_ids"], prompt["image_grid_thw"])[
            0
        ]
        prompt_positions = torch.cat([torch.arange(len(ids))[None], rope[:, 0]])
        images = {"pixel_values": prompt["pixel_values"], "image_grid_thw": prompt["image_grid_thw"]}
        for text in (examples[2].teacher_response(), "no format at all"):
            response = torch.tensor(tokenizer.encode(text, add_special_tokens=False))
            samples.append(
                {
                    "uid": uid,
                    "example": example,
                    "image": image,
                    "text": text,
                    "prompts": ids,
                    "responses": response,
                    "response_mask": torch.ones_like(response),
                    "position_ids": continue_positions(prompt_positions, len(response)),
                    "multi_modal_inputs": images,
                }
            )
    samples.append(samples[0] | {"uid": "pad"})  # verl pads the batch to its dp size with copies

    def jagged(key):
        return torch.nested.as_nested_tensor([s[key] for s in samples], layout=torch.jagged)

    fields = tu.get_tensordict(
        {
            **{key: jagged(key) for key in ("prompts", "responses", "response_mask", "position_ids")},
            "rm_scores": on_last_token(torch.ones(len(samples)), [s["response_mask"] for s in samples]),
            "multi_modal_inputs": [s["multi_modal_inputs"] for s in samples],
            "uid": [s["uid"] for s in samples],
            "teacher_caption": [parse_response(s["example"].teacher_response()).caption for s in samples],
            "teacher_cot": [parse_response(s["example"].teacher_response()).reasoning for s in samples],
        }
    )
    with initialize_config_dir(config_dir=str(align.CONFIG_DIR), version_base=None):
        config = compose(
            align.CONFIG_NAME, overrides=[f"critic.model.path={disc_dir}", "data.max_response_length=4096"]
        )
    return SimpleNamespace(samples=samples[:-1], fields=fields, processor=processor, config=config)


def cpu_engine_scores(disc, processor, samples, segments):
    inputs = render(
        processor, [s["example"].question for s in samples], [s["image"] for s in samples], segments
    )
    return disc(inputs)


def test_the_hooks_score_advantage_and_update_as_the_cpu_engine_does(step, disc_dir, transfer_queue):
    from prism.verl import align_trainer

    queue = transfer_queue
    keys = [f"step1_{i}" for i in range(len(step.fields))]
    tags = [{}] * (len(keys) - 1) + [{"is_padding": True}]
    batch = queue.kv_batch_put(keys=keys, partition_id="train", fields=step.fields, tags=tags)

    model = load_as_verl_does(disc_dir)
    trainer = align_trainer.PrismAlignTrainer.__new__(align_trainer.PrismAlignTrainer)
    trainer.config, trainer.prism = step.config, step.config.prism
    trainer.tokenizer = step.processor.tokenizer
    trainer.turn_end_ids = assistant_turn_end_ids(step.processor, trainer.tokenizer)
    trainer.vision_span = None
    trainer.critic_wg = InProcessCritic(model, queue)

    metrics = {}
    assert trainer._compute_values(batch, metrics) is batch
    # what the CPU engine scores: each segment after the prompt, as the assistant turn
    disc = Discriminator.load(disc_dir).eval()
    segments = [parse_response(s["text"]) for s in step.samples]
    valid = torch.tensor([s.valid for s in segments])
    on_format = [s for s, seg in zip(step.samples, segments, strict=True) if seg.valid]
    with torch.no_grad():
        caption = cpu_engine_scores(
            disc, step.processor, on_format, [seg.caption for seg in segments if seg.valid]
        )
        reasoning = cpu_engine_scores(
            disc, step.processor, on_format, [seg.reasoning for seg in segments if seg.valid]
        )
    assert valid.tolist() == [True, False, True, False]
    assert torch.allclose(trainer.scored.caption[valid], caption, atol=1e-5)
    assert torch.allclose(trainer.scored.reasoning[valid], reasoning, atol=1e-5)
    written = queue.kv_batch_get(keys, "train", ["rm_scores", "values"])
    reward = discriminator_reward(trainer.scored.caption, trainer.scored.reasoning, valid, 0.5, 10.0)
    assert [row[-1].item() for row in per_sample(written["rm_scores"])] == pytest.approx(
        [*reward.tolist(), 0.0]
    )
    assert metrics["prism/format_valid_rate"] == 0.5 and metrics["prism/rule_score/mean"] == 1.0

    trainer._compute_advantage(batch, metrics)
    advantages = queue.kv_batch_get(keys, "train", ["advantages"])["advantages"]
    expected = rollout_advantage(
        trainer.scored.caption, trainer.scored.reasoning, valid, trainer.scored.group, 0.5, 1.5, 10.0
    )
    assert [row[0].item() for row in per_sample(advantages)][:4] == pytest.approx(expected.tolist())

    # the update: the gradient of our alignment loss on (teacher, rollout) pairs, as the CPU engine takes it
    scored = copy.copy(trainer.scored)
    trainer._update_critic(batch, metrics)
    assert metrics["prism/disc/pairs"] == 2.0 and trainer.critic_wg.trained_rows == 8  # 2 pairs x 4 rows
    teachers = [parse_response(s["example"].teacher_response()) for s in on_format]
    student = [
        cpu_engine_scores(
            disc, step.processor, on_format, [getattr(seg, part) for seg in segments if seg.valid]
        )
        for part in ("caption", "reasoning")
    ]
    teacher = [
        cpu_engine_scores(disc, step.processor, on_format, [getattr(t, part) for t in teachers])
        for part in ("caption", "reasoning")
    ]
    alignment_discriminator_loss(teacher[0], teacher[1], student[0], student[1], 10.0, 0.001)[
        "loss"
    ].backward()
    assert scored.teacher_caption.numel() == 2
    assert torch.allclose(model.score.weight.grad, disc.v_head[1].weight.grad, atol=1e-6)
    assert metrics["prism/disc/grad_norm"] == 1.0
    assert not queue.kv_list(align_trainer.PARTITION).get(align_trainer.PARTITION)  # cleared after each call
