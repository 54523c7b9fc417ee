"""Stage 1 on LLaMA-Factory: the YAML rendered from the paper config carries every hyperparameter of the
seed's SFT column and names the data set preparation registers; torchrun spans the job's nodes; a failed
job resumes from its last complete checkpoint and the artifact appears only when training finished."""

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from prism.core.config import load_config
from prism.core.manifest import write_manifest
from prism.sft.llamafactory import DEEPSPEED_ZERO3, latest_checkpoint, launch, training_yaml

# Stands in for torchrun over prism.sft.llamafactory_rank: checks torchrun was asked for this job's ranks of
# it, resumes from the checkpoint it is given, logs every step as trainer_log.jsonl lines, saves every 2
# steps, can crash after a step, writes the ranks' peaks as RankPeakMemory does when training ends, then
# the model and all_results.json.
FAKE_TORCHRUN = textwrap.dedent(
    """\
    #!{python}
    import json, os, sys
    from pathlib import Path
    import yaml
    module = sys.argv.index("-m")
    assert sys.argv[module + 1] == "prism.sft.llamafactory_rank"
    assert "--nproc_per_node=8" in sys.argv[1:module]
    config_file, peaks_file = sys.argv[module + 2 :]
    args = yaml.safe_load(Path(config_file).read_text())
    out, total = Path(args["output_dir"]), 6
    Path(os.environ["SEEN"]).open("a").write(json.dumps(args) + "\\n")
    resume = args.get("resume_from_checkpoint")
    start = int(resume.rsplit("-", 1)[1]) if resume else 0
    with open(out / "trainer_log.jsonl", "a") as log:
        for step in range(start + 1, total + 1):
            log.write(json.dumps({{"current_steps": step, "total_steps": total, "loss": 2.0 / step,
                                  "lr": 1e-5, "epoch": step / total}}) + "\\n")
            if step % 2 == 0:
                (out / f"checkpoint-{{step}}").mkdir(exist_ok=True)
                (out / f"checkpoint-{{step}}" / "trainer_state.json").write_text("{{}}")
            if step == int(os.environ.get("CRASH_AFTER", 0)):
                (out / "checkpoint-6").mkdir()  # a save the crash cut short: no trainer_state.json
                sys.exit(1)
    Path(peaks_file).write_text(json.dumps({{"gpu_allocated_gib": [61.5, 60.25]}}))
    (out / "model.safetensors").write_text("weights")
    (out / "config.json").write_text("{{}}")
    (out / "training_args.bin").write_text("state")
    (out / "all_results.json").write_text(json.dumps({{"train_loss": 0.9}}))
    """
)


def prepared_sft(directory: Path, examples: int) -> Path:
    """A synthetic SFT set built and prepared by the data stage's CLI, as prepare_dataset leaves it."""
    spec = {"source": "synthetic", "synthetic": {"examples": examples, "seed": 0}}
    data = [sys.executable, "-m", "prism.data"]
    build = [*data, "dataset", "--name", "sft", "--config", json.dumps(spec), "--out", str(directory / "raw")]
    subprocess.run(build, check=True, capture_output=True)
    prepare = [*data, "prepare", "--name", "sft", "--raw", str(directory / "raw"), "--config", "{}"]
    prepare += ["--settings", '{"max_rejected_fraction": 0}', "--out", str(directory / "sft")]
    subprocess.run(prepare, check=True, capture_output=True)
    return directory / "sft"


@pytest.fixture
def paper_sft(paper_config) -> dict:
    return load_config(paper_config).sft.stage_slice()


def test_paper_yaml_has_every_hyperparameter_of_the_seed_sft_column(paper_sft, tmp_path):
    settings = training_yaml(paper_sft, Path("/m/Qwen3-VL-8B"), Path("/d/sft"), Path("/w/out"), None)
    expected = {
        "model_name_or_path": "/m/Qwen3-VL-8B",
        "stage": "sft",
        "finetuning_type": "full",
        "template": "qwen3_vl_nothink",
        "learning_rate": 1.0e-5,
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.1,
        "num_train_epochs": 1.0,
        "cutoff_len": 8192,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "weight_decay": 0.0,
        "bf16": True,
        "freeze_vision_tower": True,
        "freeze_multi_modal_projector": True,
        "freeze_language_model": False,
        "dataset": "prism_sft",
        "dataset_dir": "/d/sft",
        "media_dir": "/d/sft",
        "output_dir": "/w/out",
        "image_max_pixels": 1605632,
        "seed": 42,
        "save_only_model": False,
        "overwrite_output_dir": False,
        "report_to": "none",
    }
    assert {key: settings[key] for key in expected} == expected
    assert "resume_from_checkpoint" not in settings
    zero3 = json.loads(Path(settings["deepspeed"]).read_text())
    assert settings["deepspeed"] == str(DEEPSPEED_ZERO3)
    assert zero3["zero_optimization"]["stage"] == 3
    assert zero3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True  # one HF model
    assert yaml.safe_load(yaml.safe_dump(settings)) == settings  # what LLaMA-Factory reads back


def test_the_yaml_names_the_data_set_preparation_registers(paper_sft, tmp_path):
    data = prepared_sft(tmp_path, examples=4)
    settings = training_yaml(paper_sft, Path("/m"), data, Path("/w"), None)
    entry = json.loads((data / "dataset_info.json").read_text())[settings["dataset"]]
    assert entry["formatting"] == "sharegpt" and entry["columns"] == {
        "messages": "messages",
        "images": "images",
    }
    assert entry["tags"]["user_tag"] == "user" and entry["tags"]["assistant_tag"] == "assistant"
    rows = [json.loads(line) for line in (data / entry["file_name"]).read_text().splitlines()]
    assert len(rows) == 4
    for row in rows:  # LLaMA-Factory: as many <image> as images, each resolvable under media_dir
        assert sum(m["content"].count("<image>") for m in row["messages"]) == len(row["images"]) == 1
        assert (Path(settings["media_dir"]) / row["images"][0]).is_file()


def test_torchrun_spans_one_node_directly_and_several_through_srun(tmp_path):
    peaks = Path("/w/peak_memory.json")
    command, env = launch(Path("/w/sft.yaml"), peaks, nodes=1, gpus_per_node=8, environ={"PATH": "/bin"})
    assert command[:5] == [
        "torchrun",
        "--nnodes=1",
        "--nproc_per_node=8",
        "--master_addr=127.0.0.1",
        command[4],
    ]
    assert command[5:] == ["--node_rank=0", "-m", "prism.sft.llamafactory_rank", "/w/sft.yaml", str(peaks)]
    assert int(command[4].removeprefix("--master_port=")) > 0
    assert env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"  # as llamafactory-cli's launcher sets

    scontrol = tmp_path / "scontrol"  # the job's nodes, as Slurm expands its compressed list
    scontrol.write_text("#!/bin/sh\necho gpu-a01\necho gpu-a02\n")
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    environ = {"PATH": f"{tmp_path}:/bin", "SLURM_JOB_NODELIST": "gpu-a[01-02]"}
    command, env = launch(Path("/w/sft.yaml"), peaks, nodes=2, gpus_per_node=8, environ=environ)
    assert command[:5] == ["srun", "--overlap", "--nodes=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    per_node = command[-1].split()
    assert per_node[:5] == ["exec", "torchrun", "--nnodes=2", "--nproc_per_node=8", "--master_addr=gpu-a01"]
    assert per_node[6:] == [
        '--node_rank="$SLURM_NODEID"',
        "-m",
        "prism.sft.llamafactory_rank",
        "/w/sft.yaml",
        str(peaks),
    ]


# Two torchrun ranks on gloo end training as the Trainer's callback handler does on every rank; the second
# holds 300 MB more than the first.
TWO_RANKS = textwrap.dedent(
    """\
    import sys
    import torch.distributed as dist
    from transformers import TrainerControl, TrainerState
    from prism.sft.llamafactory_rank import RankPeakMemory

    dist.init_process_group("gloo")
    held = b"x" * (1 + 300_000_000 * dist.get_rank())
    state = TrainerState(is_world_process_zero=dist.get_rank() == 0)
    RankPeakMemory(sys.argv[1]).on_train_end(None, state, TrainerControl())
    dist.destroy_process_group()
    """
)


def test_each_rank_s_peak_is_gathered_in_rank_order(tmp_path):
    script, peaks = tmp_path / "ranks.py", tmp_path / "peak_memory.json"
    script.write_text(TWO_RANKS)
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node=2"]
    done = subprocess.run([*torchrun, str(script), str(peaks)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = json.loads(peaks.read_text())["host_rss_gib"]
    assert 0.25 < second - first < 0.35  # GiB: the 300 MB only the second rank held


def test_an_incomplete_checkpoint_is_never_resumed_from(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for step, complete in ((2, True), (10, True), (12, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-10"  # by number, not by name


def test_a_failed_job_resumes_from_its_last_checkpoint_and_exports_only_when_finished(paper_sft, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cli = bin_dir / "torchrun"
    cli.write_text(FAKE_TORCHRUN.format(python=sys.executable))
    cli.chmod(cli.stat().st_mode | stat.S_IEXEC)
    for name in ("model", "data"):
        write_manifest(tmp_path / name / "manifest.json", name, [], {})
    seen = tmp_path / "seen.jsonl"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SEEN=str(seen))
    command = [sys.executable, "-m", "prism.sft", "--config", json.dumps(paper_sft)]
    command += ["--model", str(tmp_path / "model"), "--data", str(tmp_path / "data")]
    command += ["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), "--gpus-per-node", "8"]

    failed = subprocess.run(command, env=env | {"CRASH_AFTER": "5"}, capture_output=True, text=True)
    assert failed.returncode != 0 and "Traceback" not in failed.stderr
    assert "last complete checkpoint: checkpoint-4. Rerun the job to resume" in failed.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()

    rerun = subprocess.run(command, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "LLaMA-Factory from checkpoint-4" in rerun.stdout
    attempts = [json.loads(line) for line in seen.read_text().splitlines()]
    assert [a.get("resume_from_checkpoint", "").rsplit("/", 1)[-1] for a in attempts] == ["", "checkpoint-4"]
    out = tmp_path / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["resumed_from"] == "checkpoint-4" and manifest["metrics"]["steps"] == 6
    assert manifest["metrics"]["train_loss"] == 0.9
    assert manifest["metrics"]["peak_memory"] == {"gpu_allocated_gib": [61.5, 60.25]}  # the ranks' peaks
    assert manifest["engine"]["arguments"]["learning_rate"] == 1.0e-5
    curve = (out / "metrics.csv").read_text().splitlines()
    assert curve[0] == "step,loss,lr" and [row.split(",")[0] for row in curve[1:]] == list("123456")
    assert (out / "model.safetensors").read_text() == "weights" and not (out / "training_args.bin").exists()
    assert not list(out.glob("checkpoint-*"))  # checkpoints stay in the work directory


def test_the_tiny_processor_shows_llamafactory_its_geometry_without_saving_a_video_processor(
    tiny_dir, tmp_path
):
    """LLaMA-Factory's qwen3_vl plugin reads video_processor.merge_size even for image-only data."""
    from prism.core.modeling import load_processor

    processor = load_processor(tiny_dir)
    assert processor.video_processor.merge_size == processor.image_processor.merge_size
    assert processor.video_processor.patch_size == processor.image_processor.patch_size
    processor.save_pretrained(tmp_path)
    assert "video_processor" not in (tmp_path / "processor_config.json").read_text()


# ------------------------------------------------------------ the real LLaMA-Factory, in its own environment

LLAMAFACTORY_BIN = Path(__file__).resolve().parent.parent / ".venv-llamafactory" / "bin"
needs_llamafactory = pytest.mark.skipif(
    not (LLAMAFACTORY_BIN / "llamafactory-cli").exists() and not os.environ.get("PRISM_REQUIRE_LLAMAFACTORY"),
    reason="no .venv-llamafactory (bash scripts/setup-llamafactory.sh)",
)
# What needs a GPU, swapped for the CPU; every other setting is the paper config's rendering.
ON_CPU = {"bf16": False, "cutoff_len": 256, "image_max_pixels": 16384, "per_device_train_batch_size": 2}
ON_CPU |= {"save_steps": 2, "logging_steps": 1, "preprocessing_num_workers": 1, "dataloader_num_workers": 0}


def real_training(paper_sft, tiny_dir, data, output_dir, resume, datasets_cache):
    settings = training_yaml(paper_sft, tiny_dir, data, output_dir, resume)
    del settings["deepspeed"]  # ZeRO-3 partitions over GPUs; one CPU process trains the whole model
    config_file = output_dir.parent / "sft.yaml"
    config_file.write_text(yaml.safe_dump(settings | ON_CPU, sort_keys=False))
    peaks = output_dir.parent / "peak_memory.json"
    command, env = launch(config_file, peaks, nodes=1, gpus_per_node=1, datasets_cache=datasets_cache)
    env |= {"PATH": f"{LLAMAFACTORY_BIN}:{env['PATH']}", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    log = (output_dir.parent / f"train-{'resumed' if resume else 'first'}.log").open("w")
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants, from /proc."""
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        children += [int(child) for child in task.read_text().split()]
    return [pid, *(descendant for child in children for descendant in process_tree(child))]


@needs_llamafactory
def test_llamafactory_trains_the_paper_yaml_on_the_tiny_model_resumes_a_killed_run_and_exports(
    paper_sft, tiny_dir, tmp_path
):
    """LLaMA-Factory's training under torchrun on the YAML rendered for the paper, with only what needs a
    GPU swapped (ON_CPU): 16 examples, 8 steps, a checkpoint every 2. Killed once checkpoint-4 is
    complete, resumed from it; the export carries the base's multimodal chat template and loads with the
    next stages' loaders, and the rank recorded its memory peak at the end of training."""
    import signal
    import time

    from prism.core.modeling import load_model, load_processor
    from prism.sft.llamafactory import curves, export

    data = prepared_sft(tmp_path, examples=16)
    output_dir, cache = tmp_path / "work" / "llamafactory", tmp_path / "work" / "datasets"
    output_dir.mkdir(parents=True)

    first = real_training(paper_sft, tiny_dir, data, output_dir, None, cache)
    deadline = time.time() + 400
    while latest_checkpoint(output_dir) != output_dir / "checkpoint-4":
        assert first.poll() is None, (output_dir.parent / "train-first.log").read_text()[-3000:]
        assert time.time() < deadline, "no checkpoint-4 in time"
        time.sleep(0.2)
    # as Slurm ends a job: torchrun starts its worker in a session of its own, so kill the whole tree
    for pid in process_tree(first.pid):
        os.kill(pid, signal.SIGKILL)
    first.wait(timeout=60)
    assert not (output_dir / "all_results.json").exists()
    assert not (tmp_path / "work" / "peak_memory.json").exists()  # written when training ends
    assert any(cache.iterdir())  # the tokenized set is cached in the work directory, not in ~/.cache

    resume = latest_checkpoint(output_dir)
    second = real_training(paper_sft, tiny_dir, data, output_dir, resume, cache)
    assert second.wait(timeout=400) == 0, (output_dir.parent / "train-resumed.log").read_text()[-3000:]
    assert (
        "Resuming training from checkpoint with epoch 0 and global step 4"
        in (output_dir.parent / "train-resumed.log").read_text()
    )
    steps = curves(output_dir / "trainer_log.jsonl")
    assert list(steps) == list(range(1, 9)) and all(0 < row["loss"] < 20 for row in steps.values())
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 8 and (output_dir / "all_results.json").is_file()
    # the one CPU rank's peak resident set: the tiny model, its optimizer and LLaMA-Factory's process
    peaks = json.loads((tmp_path / "work" / "peak_memory.json").read_text())
    print(f"LLaMA-Factory rank peaks: {peaks}")
    assert list(peaks) == ["host_rss_gib"] and len(peaks["host_rss_gib"]) == 1
    assert 0.3 < peaks["host_rss_gib"][0] < 12

    export(output_dir, tmp_path / "out")
    exported = {path.name for path in (tmp_path / "out").iterdir()}
    expected = {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"}
    assert expected | {"processor_config.json", "tiny_processing.py", "all_results.json"} <= exported
    assert "training_args.bin" not in exported and not any(name.startswith("checkpoint") for name in exported)
    template = (tmp_path / "out" / "chat_template.jinja").read_text()
    assert template == (tiny_dir / "chat_template.jinja").read_text() and "<|vision_start|>" in template
    model, processor = load_model(str(tmp_path / "out")), load_processor(str(tmp_path / "out"))
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    assert processor.chat_template == template


# LLaMA-Factory's own parser on the rendered YAML builds transformers' TrainingArguments, whose DeepSpeed
# config is filled from them; the Trainer fills the rest from the model and the step count before
# deepspeed.initialize, and DeepSpeed's own config class judges the result.
ZERO3_VERDICT = textwrap.dedent(
    """\
    import json, sys
    from pathlib import Path
    from types import SimpleNamespace
    import yaml
    from deepspeed.runtime.config import DeepSpeedConfig
    from llamafactory.hparams.parser import _parse_train_args
    from transformers import AutoConfig

    settings = yaml.safe_load(Path(sys.argv[1]).read_text())
    _, _, training_args, _, _ = _parse_train_args(settings)
    filled = training_args.hf_deepspeed_config
    # the finalize reads only the model's config (hidden size); loading the model itself would now go
    # through ZeRO-3's partitioned init, which needs a process group
    model = SimpleNamespace(config=AutoConfig.from_pretrained(sys.argv[2]))
    filled.trainer_config_finalize(training_args, model, num_training_steps=100)
    verdict = DeepSpeedConfig(filled.config)
    print(json.dumps({
        "zero_stage": verdict.zero_optimization_stage,
        "micro_batch": verdict.train_micro_batch_size_per_gpu,
        "grad_accum": verdict.gradient_accumulation_steps,
        "train_batch": verdict.train_batch_size,
        "bf16": verdict.bfloat16_config.enabled,
        "gradient_clipping": verdict.gradient_clipping,
        "gather_16bit_weights_on_save": verdict.zero_config.gather_16bit_weights_on_model_save,
    }))
    """
)


@needs_llamafactory
def test_deepspeed_accepts_the_zero3_config_as_llamafactory_fills_it_from_the_paper_yaml(
    paper_sft, tiny_dir, tmp_path
):
    """One process, so DeepSpeed counts a world of 1; `use_cpu` only because transformers refuses bf16
    without a GPU, and bf16 reaches the config all the same."""
    settings = training_yaml(paper_sft, tiny_dir, tmp_path / "sft", tmp_path / "out", None)
    config_file = tmp_path / "sft.yaml"
    config_file.write_text(yaml.safe_dump(settings | {"use_cpu": True}, sort_keys=False))
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    command = [str(LLAMAFACTORY_BIN / "python"), "-c", ZERO3_VERDICT, str(config_file), str(tiny_dir)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == {
        "zero_stage": 3,
        "micro_batch": paper_sft["batch_size"],
        "grad_accum": paper_sft["grad_accum"],
        "train_batch": paper_sft["batch_size"] * paper_sft["grad_accum"],
        "bf16": True,
        "gradient_clipping": 1.0,
        "gather_16bit_weights_on_save": True,
    }
