"""The CPU engines on tiny inputs: models, upcycling, the discriminator, SFT with resume."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prism.core.modeling import encode, generate, load_model, load_processor
from prism.core.prompts import prompt_messages
from prism.core.segments import parse_response
from prism.data import synthetic
from prism.data.__main__ import main as make_data
from prism.discriminator.model import Discriminator, DiscriminatorError, render
from prism.discriminator.upcycle import save_upstream_layout, upcycle


@pytest.fixture(scope="module")
def rows():
    return [
        {"prompt": prompt_messages(e.question), "image": e.scene.image(), "example": e}
        for e in synthetic.examples(6, seed=5)
    ]


def test_tiny_model_loads_offline_with_its_image_only_processor(tiny_dir, rows):
    processor, model = load_processor(str(tiny_dir)), load_model(str(tiny_dir))
    assert type(processor).__name__ == "Qwen3VLProcessor"
    rollouts = generate(model, processor, rows[:2], max_new_tokens=8, temperature=1.0)
    assert rollouts.response_ids.shape == (2, 8)
    # a 64x64 image is 4 visual tokens, one per grid cell
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert (rollouts.inputs["input_ids"][0] == image_pad).sum() == 4


def test_upcycled_moe_without_noise_reproduces_dense_logits(tiny_dir, rows, tmp_path):
    processor, dense = load_processor(str(tiny_dir)), load_model(str(tiny_dir)).eval()
    moe = upcycle(
        dense, num_experts=4, top_k=2, noise_std=0.0, router_std=0.02, router_aux_loss_coef=0.01, seed=0
    ).eval()
    texts = [
        processor.apply_chat_template(
            [
                {
                    "role": "user",
                    "content": [{"type": "image"}, {"type": "text", "text": r["example"].question}],
                }
            ],
            tokenize=False,
        )
        for r in rows
    ]
    inputs = encode(processor, texts, [r["image"] for r in rows])
    with torch.no_grad():
        dense_logits, moe_logits = dense(**inputs).logits, moe(**inputs).logits
    valid = inputs["attention_mask"].bool()
    assert (dense_logits - moe_logits)[valid].abs().max() < 1e-5
    assert moe.config.text_config.num_experts == 4 and moe.config.text_config.num_experts_per_tok == 2

    save_upstream_layout(moe, tmp_path)
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", "pt") as shard:
        key = "model.language_model.layers.0.mlp.experts.gate_up_proj"
        assert shard.get_slice(key).get_shape() == [4, 64, 2 * 96]  # (E, H, 2I): vLLM's layout
    with torch.no_grad():
        reloaded = load_model(str(tmp_path)).eval()(**inputs).logits
    assert torch.equal(reloaded, moe_logits)


def test_noisy_upcycling_perturbs_every_expert_differently(tiny_dir):
    moe = upcycle(
        load_model(str(tiny_dir)), 4, 2, noise_std=0.01, router_std=0.02, router_aux_loss_coef=0.01, seed=0
    )
    experts = moe.model.language_model.layers[0].mlp.experts.gate_up_proj
    assert not torch.equal(experts[0], experts[1])
    assert (experts[0] - experts[1]).std().item() == pytest.approx(0.01 * 2**0.5, rel=0.1)


def test_discriminator_round_trips_and_never_invents_a_head(tiny_dir, rows, tmp_path):
    processor = load_processor(str(tiny_dir))
    disc = Discriminator(load_model(str(tiny_dir)), dropout=0.1).eval()
    questions = [r["example"].question for r in rows]
    inputs = render(
        processor, questions, [r["image"] for r in rows], [r["example"].teacher_response() for r in rows]
    )
    with torch.no_grad():
        scores = disc(inputs)
    disc.save(tmp_path / "disc")
    with torch.no_grad():
        assert torch.equal(Discriminator.load(tmp_path / "disc").eval()(inputs), scores)
    with pytest.raises(DiscriminatorError, match="not a discriminator checkpoint"):
        Discriminator.load(tiny_dir)
    from safetensors.torch import save_file

    save_file({"v_head.1.weight": torch.zeros(1, 32)}, tmp_path / "disc" / "value_head.safetensors")
    with pytest.raises(DiscriminatorError, match="the head belongs to another model"):
        Discriminator.load(tmp_path / "disc")


def test_discriminator_scores_the_last_real_token_whatever_the_padding_side(tiny_dir, rows):
    processor = load_processor(str(tiny_dir))
    disc = Discriminator(load_model(str(tiny_dir)), dropout=0.0).eval()
    # row 0 is the longest: the case the reference scores at the wrong token (method-reference B1)
    segments = [r["example"].teacher_response()[: 100 - 15 * i] for i, r in enumerate(rows)]
    left = render(processor, [r["example"].question for r in rows], [r["image"] for r in rows], segments)
    mask = left["attention_mask"].bool()
    assert mask.sum(-1).unique().numel() > 1  # rows of different lengths, so padding matters

    def pad_right(tensor):
        return torch.stack([torch.cat([row[m], row[~m]]) for row, m in zip(tensor, mask, strict=True)])

    right = {**left, **{k: pad_right(left[k]) for k in ("input_ids", "attention_mask", "mm_token_type_ids")}}
    with torch.no_grad():
        assert torch.allclose(disc(left), disc(right), atol=1e-4)


def test_teacher_and_student_segments_end_on_the_same_scored_token(tiny_dir, rows):
    """Method-reference B2: both sides are rendered by one function, so the score is read on one token."""
    processor = load_processor(str(tiny_dir))
    example = rows[0]["example"]
    teacher = example.teacher_response()
    student = teacher.replace(example.answer, "wrong") + "\n\n"
    inputs = render(processor, [example.question] * 2, [rows[0]["image"]] * 2, [teacher, student])
    last = inputs["input_ids"][:, -1]  # left padding: the last column is every row's last real token
    assert last[0] == last[1]
    assert inputs["attention_mask"][:, -1].all()


def test_a_text_only_discriminator_renders_the_same_tokens_without_the_image(tiny_dir, rows, tmp_path):
    from prism.align.cpu import score_segments
    from prism.core.modeling import chat_text

    processor = load_processor(str(tiny_dir))
    example, tokenizer = rows[0]["example"], processor.tokenizer
    teacher = parse_response(example.teacher_response())
    text_only = render(processor, [example.question], None, [teacher.caption])
    assert set(text_only) == {"input_ids", "attention_mask"}  # no pixels, no image tokens
    templated = chat_text(processor, prompt_messages(example.question), teacher.caption)
    span = "<|vision_start|><|image_pad|><|vision_end|>"
    assert span in templated
    expected = [token for part in templated.split(span) for token in tokenizer.encode(part)]
    assert text_only["input_ids"][0].tolist() == expected

    Discriminator(load_model(str(tiny_dir)), dropout=0.1, sees_images=False).save(tmp_path / "text")
    Discriminator(load_model(str(tiny_dir)), dropout=0.1).save(tmp_path / "seeing")
    align_rows = [{"extra_info": {"question": example.question}, "image": rows[0]["image"]}]
    other_image = [dict(align_rows[0], image=rows[1]["image"])]  # the same question, another image
    for name, changes_with_image in (("text", False), ("seeing", True)):
        disc = Discriminator.load(tmp_path / name).eval()
        assert disc.sees_images is not (name == "text")
        with torch.no_grad():
            scores = [
                score_segments(disc, processor, r, [teacher.caption], [teacher.reasoning], clip=10.0)
                for r in (align_rows, other_image)
            ]
        same = all(torch.equal(a, b) for a, b in zip(*scores, strict=True))
        assert same is not changes_with_image


def test_a_released_discriminator_with_its_head_inside_the_shards_loads(tiny_dir, rows, tmp_path):
    from safetensors.torch import load_file, save_file

    processor = load_processor(str(tiny_dir))
    disc = Discriminator(load_model(str(tiny_dir)), dropout=0.1).eval()
    disc.save(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["v_head.1.weight"] = load_file(tmp_path / "value_head.safetensors")["v_head.1.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "value_head.safetensors").unlink()
    (tmp_path / "discriminator.json").unlink()
    example = rows[0]["example"]
    inputs = render(processor, [example.question], [rows[0]["image"]], [example.teacher_response()])
    with torch.no_grad():
        assert torch.equal(Discriminator.load(tmp_path, dropout=0.1).eval()(inputs), disc(inputs))


def run_sft(model_dir, data_dir, out, work, steps_config):
    config = {
        "engine": "cpu",
        "seed": 1,
        "freeze_vision_tower": True,
        "batch_size": 8,
        "grad_accum": 1,
        "lr": 3e-3,
        "weight_decay": 0.0,
        "warmup_ratio": 0.0,
        "scheduler": "constant",
        "max_length": 256,
        **steps_config,
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "prism.sft",
            "--config",
            json.dumps(config),
            "--model",
            str(model_dir),
            "--data",
            str(data_dir),
            "--out",
            str(out),
            "--work",
            str(work),
        ],
        capture_output=True,
        text=True,
        check=True,
    )


def test_sft_learns_and_a_rerun_resumes_from_the_work_directory(tiny_dir, tmp_path):
    make_data(
        [
            "dataset",
            "--name",
            "sft",
            "--config",
            '{"source": "synthetic", "synthetic": {"examples": 64, "seed": 0}}',
            "--out",
            str(tmp_path / "data"),
        ]
    )
    run_sft(tiny_dir, tmp_path / "data", tmp_path / "out", tmp_path / "work", {"epochs": 2})
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["metrics"]["steps"] == 16
    assert manifest["metrics"]["final_loss"] < 0.7 * manifest["metrics"]["first_loss"]
    assert [0.1 < peak < 8 for peak in manifest["metrics"]["peak_memory"]["host_rss_gib"]] == [True]
    assert set(manifest["inputs"]) == {f"{tiny_dir}/manifest.json", f"{tmp_path / 'data'}/manifest.json"}
    rerun = run_sft(tiny_dir, tmp_path / "data", tmp_path / "out", tmp_path / "work", {"epochs": 2})
    assert "resumed from step 16" in rerun.stdout


def test_a_downloaded_discriminator_is_checked_for_its_head(tiny_dir, tmp_path):
    from prism.data.__main__ import check_discriminator

    with pytest.raises(SystemExit, match="this is a plain model, not a discriminator"):
        check_discriminator(tiny_dir)
    Discriminator(load_model(str(tiny_dir)), dropout=0.1).save(tmp_path)
    assert check_discriminator(tmp_path) == [1, 64]


def test_warmup_shares_batches_across_processes_and_learns(tiny_dir, tmp_path):
    """The code `accelerate launch` runs on 8 GPUs, here as 2 CPU processes (torchrun, gloo)."""
    from prism.discriminator.upcycle import save_upstream_layout, upcycle

    save_upstream_layout(upcycle(load_model(str(tiny_dir)), 4, 2, 0.01, 0.02, 0.01, 0), tmp_path / "moe")
    load_processor(str(tiny_dir)).save_pretrained(tmp_path / "moe")
    for extra in ("tiny_processing.py", "processor_config.json", "manifest.json"):
        (tmp_path / "moe" / extra).write_bytes((tiny_dir / extra).read_bytes())
    make_data(
        [
            "dataset",
            "--name",
            "warmup",
            "--config",
            '{"source": "synthetic", "synthetic": {"examples": 96, "seed": 0}}',
            "--out",
            str(tmp_path / "data"),
        ]
    )
    config = {
        "architecture": "moe",
        "sees_images": True,
        "value_head_dropout": 0.1,
        "warmup": {
            "engine": "cpu",
            "lr": 1e-3,
            "weight_decay": 0.01,
            "scheduler": "cosine",
            "warmup_ratio": 0.1,
            "epochs": 2,
            "batch_size": 4,
            "grad_accum": 2,
            "max_length": 256,
            "heldout_pairs": 32,
            "max_image_side": 560,
            "max_pixels": 16384,
            "gradient_checkpointing": True,
            "grad_clip": 1.0,
            "seed": 0,
        },
    }
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2", "-m"]
    subprocess.run(
        [
            *torchrun,
            "prism.discriminator",
            "warmup",
            "--config",
            json.dumps(config),
            "--model",
            str(tmp_path / "moe"),
            "--data",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "disc"),
            "--work",
            str(tmp_path / "work"),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    metrics = json.loads((tmp_path / "disc" / "manifest.json").read_text())["metrics"]
    assert metrics["processes"] == 2
    # 64 lines = 128 comparison pairs, 4 per process and forward (8 sequences) x 2 processes x 2 accumulated
    assert (metrics["lines"], metrics["pairs"], metrics["sequences_per_forward"]) == (64, 128, 8)
    assert metrics["pairs_per_step"] == 16 and metrics["steps"] == 16  # 128 pairs / 16 x 2 epochs
    assert metrics["heldout_loss_after"] < metrics["heldout_loss_before"]
    assert Discriminator.load(tmp_path / "disc") is not None


def test_image_pixel_cap_really_shrinks_images(tiny_dir):
    from PIL import Image

    from prism.core.modeling import cap_image_pixels

    processor = load_processor(str(tiny_dir))
    image = Image.new("RGB", (512, 512), "red")
    assert processor.image_processor(images=[image])["image_grid_thw"].tolist() == [[1, 8, 8]]
    cap_image_pixels(processor, 64 * 64)
    assert processor.image_processor(images=[image])["image_grid_thw"].tolist() == [[1, 4, 4]]
