"""The discriminator warmup as the GPUs run it: every batch on the model's device, the reference's batch
(4 comparison pairs = 8 sequences per process), images read per batch and resized to 560 px first, and
ZeRO-2's micro batch set where `accelerator.prepare` needs it."""

import json
import os
import subprocess
import textwrap
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from PIL import Image

from prism.core.modeling import load_model, load_processor
from prism.data.__main__ import main as make_data
from prism.data.formats import DataError
from prism.discriminator import stages
from prism.discriminator.accelerated import DEEPSPEED_CONFIG, launch_command
from prism.discriminator.model import Discriminator
from prism.discriminator.pairs import WarmupLines, pairs_of, sequences
from prism.discriminator.upcycle import save_upstream_layout, upcycle

WARMUP = {
    "engine": "cpu",
    "lr": 1e-3,
    "weight_decay": 0.01,
    "scheduler": "cosine",
    "warmup_ratio": 0.1,
    "epochs": 1,
    "batch_size": 4,
    "grad_accum": 1,
    "max_length": 256,
    "heldout_pairs": 4,
    "max_image_side": 560,
    "max_pixels": 16384,
    "gradient_checkpointing": True,
    "grad_clip": 1.0,
    "seed": 0,
}


@pytest.fixture(scope="module")
def moe_dir(tiny_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("moe")
    save_upstream_layout(upcycle(load_model(str(tiny_dir)), 4, 2, 0.01, 0.02, 0.01, 0), path)
    load_processor(str(tiny_dir)).save_pretrained(path)
    for extra in ("tiny_processing.py", "processor_config.json", "manifest.json"):
        (path / extra).write_bytes((tiny_dir / extra).read_bytes())
    return path


@pytest.fixture(scope="module")
def warmup_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("warmup")
    spec = {"source": "synthetic", "synthetic": {"examples": 16, "seed": 0}}
    make_data(["dataset", "--name", "warmup", "--config", json.dumps(spec), "--out", str(path)])
    return path


class ModelMovedAway(Exception):
    """Raised by the device check at the first forward of the prepared model: the check passed."""


def test_every_forward_gets_its_batch_on_the_models_device(moe_dir, warmup_data, tmp_path, monkeypatch):
    """Accelerate puts the model on `accelerator.device` (a GPU in the cluster run). Here that device is
    made `meta`, which a CPU build of torch has: `prepare` moves the model there, and a forward hook checks
    that every input tensor is on the device of the model's parameters. A batch left on the CPU fails the
    check; the first forward of the prepared model that passes it ends the run (meta tensors hold no
    values to train on). Checked with and without held-out lines: the held-out metrics' forward comes
    first when there are some, the training step's otherwise."""
    from accelerate import Accelerator

    monkeypatch.setattr(Accelerator, "device", property(lambda self: torch.device("meta")))

    class DeviceChecked(Discriminator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.register_forward_pre_hook(self.check_devices)

        @staticmethod
        def check_devices(module, args):
            model_device = next(module.parameters()).device
            inputs = {key: value.device for key, value in args[0].items()}
            assert set(inputs.values()) == {model_device}, f"model on {model_device}, inputs on {inputs}"
            if model_device.type == "meta":
                raise ModelMovedAway

    monkeypatch.setattr(stages, "Discriminator", DeviceChecked)
    for heldout in (4, 0):
        config = {"architecture": "moe", "sees_images": True, "value_head_dropout": 0.1}
        config["warmup"] = dict(WARMUP, heldout_pairs=heldout)
        args = Namespace(config=config, model=moe_dir, data=warmup_data, threads=1)
        args.out, args.work = tmp_path / f"out{heldout}", tmp_path / f"work{heldout}"
        with pytest.raises(ModelMovedAway):
            stages.warmup_stage(args)


def test_a_batch_of_4_pairs_is_a_forward_of_8_sequences_teachers_then_students(warmup_data, tiny_dir):
    data = WarmupLines(warmup_data / "warmup_pairwise.jsonl")
    batch = pairs_of([0, 1])  # two lines: each a caption pair and a reasoning pair
    questions, images, segments = sequences(data, batch, 560, sees_images=True)
    first, second = data[0], data[1]
    assert segments == [
        *(first["teacher_caption"], first["teacher_cot"], second["teacher_caption"], second["teacher_cot"]),
        *(first["student_caption"], first["student_cot"], second["student_caption"], second["student_cot"]),
    ]
    assert (
        questions
        == [first["prompt"]] * 2 + [second["prompt"]] * 2 + [first["prompt"]] * 2 + [second["prompt"]] * 2
    )
    assert len(images) == 8
    rendered = stages.render_pairs(load_processor(str(tiny_dir)), data, batch, 560, sees_images=True)
    assert rendered["input_ids"].shape[0] == 8 and rendered["image_grid_thw"].shape[0] == 8


def test_lines_are_checked_on_opening_and_their_images_read_only_per_batch(tmp_path, monkeypatch):
    Image.new("RGB", (1400, 700), "red").save(tmp_path / "wide.png")
    Image.new("RGB", (300, 200), "blue").save(tmp_path / "small.png")
    line = {f"{side}_{part}": "x" for side in ("teacher", "student") for part in ("caption", "cot")}
    lines = [dict(line, prompt="q1", image="wide.png"), dict(line, prompt="q2", image="small.png")]
    path = tmp_path / "warmup_pairwise.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in lines))

    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    data = WarmupLines(path)
    assert len(data) == 2 and opened == []  # checked, nothing decoded
    assert data[1]["prompt"] == "q2"
    _, images, _ = sequences(data, pairs_of([0, 1]), 560, sees_images=True)
    assert [image.size for image in images[:4]] == [(560, 280), (560, 280), (300, 200), (300, 200)]
    assert len(opened) == 2  # one decode per line in the batch

    path.write_text(json.dumps(dict(line, prompt="q", image="gone.png")) + "\n")
    with pytest.raises(DataError, match="warmup_pairwise.jsonl:1: cannot read image .*gone.png"):
        WarmupLines(path)
    path.write_text(json.dumps(dict(line, prompt="", image="small.png")) + "\n")
    with pytest.raises(DataError, match=r"warmup_pairwise.jsonl:1: empty or missing fields \['prompt'\]"):
        WarmupLines(path)


def test_the_dense_discriminators_zero_balance_loss_is_on_the_models_device(tiny_dir):
    disc = Discriminator(load_model(str(tiny_dir)), dropout=0.1).to("meta")
    mask = torch.ones(2, 3, device="meta", dtype=torch.long)
    out = Namespace(router_logits=None)
    assert disc._balance_loss(out, mask).device.type == "meta"


def test_the_zero2_config_is_found_in_the_package_whatever_the_jobs_working_directory():
    assert DEEPSPEED_CONFIG.is_absolute() and DEEPSPEED_CONFIG.is_file()
    assert f"--deepspeed_config_file {DEEPSPEED_CONFIG} " in launch_command(8, 4)
    zero2 = json.loads(Path(DEEPSPEED_CONFIG).read_text())
    assert zero2["zero_optimization"]["stage"] == 2 and zero2["train_micro_batch_size_per_gpu"] == "auto"


DISCRIMINATOR_BIN = Path(__file__).resolve().parent.parent / ".venv-discriminator" / "bin"
needs_deepspeed = pytest.mark.skipif(
    not (DISCRIMINATOR_BIN / "accelerate").exists() and not os.environ.get("PRISM_REQUIRE_DISCRIMINATOR"),
    reason="no .venv-discriminator (bash scripts/setup-discriminator.sh)",
)

# What each process `accelerate launch` starts runs instead of `-m prism.discriminator`: the warmup module,
# after the two things a GPU node does differently, keeping the engine deepspeed.initialize returns, whose
# config DeepSpeed's own class built and judged from what accelerate filled in.
CPU_RANK = textwrap.dedent(
    """\
    import json, os, runpy, sys
    from pathlib import Path
    import deepspeed
    import deepspeed.ops
    from accelerate import PartialState

    # DeepSpeed's CPU accelerator JIT-compiles a shared-memory allreduce when its first process group opens
    # (13 min on two busy cores); gloo works without it. CUDA's accelerator has no such op.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    # Without a GPU, accelerate's DeepSpeed path finds no backend and counts one process; its CPU path opens
    # the gloo group that DeepSpeed then joins.
    PartialState(cpu=True)
    engines, initialize = [], deepspeed.initialize
    deepspeed.initialize = lambda *args, **kwargs: engines.append(initialize(*args, **kwargs)) or engines[-1]
    sys.argv = ["prism.discriminator", *sys.argv[1:]]
    runpy.run_module("prism.discriminator", run_name="__main__", alter_sys=True)
    [(engine, *_)] = engines
    verdict = engine._config  # deepspeed.runtime.config.DeepSpeedConfig
    Path(os.environ["VERDICTS"], f"rank{os.environ['RANK']}.json").write_text(json.dumps({
        "zero_stage": verdict.zero_optimization_stage,
        "micro_batch": verdict.train_micro_batch_size_per_gpu,
        "grad_accum": verdict.gradient_accumulation_steps,
        "train_batch": verdict.train_batch_size,
        "bf16": verdict.bfloat16_config.enabled,
        "gradient_clipping": verdict.gradient_clipping,
        "world_size": verdict.world_size,
        "optimizer_steps": engine.global_steps,
    }))
    """
)


@needs_deepspeed
def test_two_processes_train_the_warmup_under_zero2_as_the_rules_launcher_starts_them(
    moe_dir, warmup_data, tmp_path
):
    """The rule's `accelerate launch --use_deepspeed` line with ds_zero2.json, 2 processes on gloo: the real
    Accelerator, `prepare` building DeepSpeed's ZeRO-2 engine, micro-steps, clipping and optimizer steps
    through it, the held-out metrics gathered, and save_state writing one optimizer shard per rank.
    DeepSpeed's config class judged the config as accelerate filled it; the engine took every step."""
    rank = tmp_path / "cpu_rank.py"
    rank.write_text(CPU_RANK)
    (tmp_path / "verdicts").mkdir()
    grad_accum, pairs_per_process = 2, 2
    warmup = dict(WARMUP, engine="accelerate", batch_size=pairs_per_process, grad_accum=grad_accum)
    config = {"architecture": "moe", "sees_images": True, "value_head_dropout": 0.1, "warmup": warmup}
    command = [*launch_command(2, grad_accum).split(), str(rank), "warmup", "--config", json.dumps(config)]
    command += ["--model", str(moe_dir), "--data", str(warmup_data), "--out", str(tmp_path / "out")]
    command += ["--work", str(tmp_path / "work"), "--threads", "2"]
    env = dict(os.environ, PATH=f"{DISCRIMINATOR_BIN}:{os.environ['PATH']}", DS_ACCELERATOR="cpu")
    env["VERDICTS"] = str(tmp_path / "verdicts")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    metrics = json.loads((tmp_path / "out" / "manifest.json").read_text())["metrics"]
    assert metrics["processes"] == 2 and metrics["steps"] == 3  # 24 pairs, 8 a step
    assert metrics["pairs_per_step"] == 2 * pairs_per_process * grad_accum == 8
    assert {"heldout_acc_before", "heldout_acc_after"} <= set(metrics)
    # no CUDA: each rank's host peak, named as such
    assert list(metrics["peak_memory"]) == ["host_rss_gib"]
    assert len(metrics["peak_memory"]["host_rss_gib"]) == 2
    assert all(0.1 < peak < 8 for peak in metrics["peak_memory"]["host_rss_gib"])
    for process in (0, 1):
        verdict = json.loads((tmp_path / "verdicts" / f"rank{process}.json").read_text())
        assert verdict == {
            "zero_stage": 2,
            "micro_batch": pairs_per_process,
            "grad_accum": grad_accum,
            "train_batch": metrics["pairs_per_step"],
            "bf16": True,
            "gradient_clipping": 1.0,
            "world_size": 2,
            "optimizer_steps": 3,
        }
    [state] = (tmp_path / "work").glob("*/accelerate_state-00000003")
    shards = sorted(path.name for path in (state / "pytorch_model").glob("*optim_states.pt"))
    assert shards == [f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)]
