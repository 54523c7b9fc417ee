"""Per-GPU memory before submission: the figures checked by hand for the Stage 2 rollout and the judge,
DeepSpeed's ZeRO arithmetic, shapes read from a checkpoint's config.json as transformers builds it, and
`prism plan` / `prism preflight` marking and refusing what does not fit."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, write_config
from prism.cluster.memory import (
    GIB,
    PUBLISHED_CONFIGS,
    activation_bytes,
    architecture,
    upcycled,
    vllm_memory,
    zero2_model_states,
    zero3_model_states,
)


def published(repo: str):
    return architecture(PUBLISHED_CONFIGS[repo], repo)


QWEN3_VL_4B = "Qwen/Qwen3-VL-4B-Instruct"
JUDGE_32B = "Qwen/Qwen2.5-32B-Instruct"


def test_parameter_counts_of_the_published_shapes_match_a_count_by_hand():
    vl4b = published(QWEN3_VL_4B)
    # embedding (tied) + 36 x (q 2560x4096, k/v 2x2560x1024, o 4096x2560, q/k norms 2x128,
    # gate/up/down 3x2560x9728, two norms 2x2560) + final norm
    per_layer = 10_485_760 + 5_242_880 + 10_485_760 + 256 + 74_711_040 + 5_120
    assert vl4b.params - vl4b.vision_params == 151_936 * 2560 + 36 * per_layer + 2560 == 4_022_468_096
    assert vl4b.largest_layer_params == 151_936 * 2560  # the embedding, DeepSpeed's largest layer
    judge = published(JUDGE_32B)
    # untied embedding and head + 64 x (q with bias, k/v with bias, o, gate/up/down, two norms) + norm
    per_layer = (5120 * 5120 + 5120) + 2 * (5120 * 1024 + 1024) + 5120 * 5120 + 3 * 5120 * 27648 + 2 * 5120
    assert judge.params == 2 * 152_064 * 5120 + 64 * per_layer + 5120 == 32_763_876_352


def test_kv_cache_per_token_is_vllms_two_x_layers_x_kv_heads_x_head_dim_x_bf16():
    vl4b, judge = published(QWEN3_VL_4B), published(JUDGE_32B)
    assert vl4b.kv_bytes_per_token() == 2 * 36 * 8 * 128 * 2 == 147_456  # 144 KiB
    assert 262_144 * vl4b.kv_bytes_per_token() == 36 * GIB  # Qwen3-VL's default context
    assert judge.kv_bytes_per_token() == 2 * 64 * 8 * 128 * 2
    assert 32_768 * judge.kv_bytes_per_token() == 8 * GIB


def test_stage2_rollout_at_a_quarter_of_an_h100_checked_by_hand():
    vl4b = published(QWEN3_VL_4B)
    bounded = vllm_memory(vl4b, 80 * GIB, 0.25, 8192, 8192, enforce_eager=False)
    assert bounded.budget == 20 * GIB
    assert bounded.weights == 2 * 4_437_815_808  # 8.27 GiB of bf16 weights
    # profiled forward 8192 x 2 x (4 x 2560 + 2 x 9728), 256 sampler rows of fp32 logits,
    # 0.5 GiB non-torch and 2 GiB of CUDA graphs
    assert bounded.overhead == 8192 * 2 * 29_696 + 256 * 151_936 * 4 + 2.5 * GIB
    assert bounded.kv_available / GIB == pytest.approx(20 - 8.266 - 3.098, abs=0.01)  # 8.64 GiB
    assert bounded.kv_one_request == 8192 * 147_456  # 1.125 GiB
    assert bounded.starts and bounded.sequences_at_full_length == 7
    unbounded = vllm_memory(vl4b, 80 * GIB, 0.25, None, 8192, enforce_eager=False)
    assert unbounded.max_model_len == 262_144 and unbounded.kv_one_request == 36 * GIB
    assert not unbounded.starts


def test_judge_at_0_9_with_cuda_graphs_does_not_start_and_at_0_95_eager_does():
    judge = published(JUDGE_32B)
    graphs = vllm_memory(judge, 80 * GIB, 0.9, 32_768, 8192, enforce_eager=False)
    assert graphs.weights / GIB == pytest.approx(61.03, abs=0.01)
    # 72 GiB - 61.03 weights - (8192 x 2 x (4 x 5120 + 2 x 27648) + 256 x 152064 x 4 + 2.5 GiB = 3.80)
    assert graphs.kv_available / GIB == pytest.approx(72 - 61.03 - 3.80, abs=0.01)
    assert not graphs.starts  # 7.17 GiB left, 8 GiB needed
    eager = vllm_memory(judge, 80 * GIB, 0.95, 32_768, 8192, enforce_eager=True)
    assert eager.kv_available / GIB == pytest.approx(76 - 61.03 - 1.80, abs=0.01)  # no CUDA graphs: 13.17
    assert eager.starts and eager.sequences_at_full_length == 1


def test_zero_estimators_follow_deepspeed_0_19_8():
    moe = architecture(upcycled(PUBLISHED_CONFIGS["Qwen/Qwen3-VL-2B-Instruct"], 4, 2), "upcycled")
    gpu, cpu = zero2_model_states(moe.params, 8, 1, cpu_offload=False)
    assert gpu == 2 * moe.params + int(18 * moe.params / 8)  # bf16 params whole, the rest sharded
    assert cpu == moe.params * 4 * 8 * 1.5
    assert zero2_model_states(moe.params, 8, 1, cpu_offload=True)[0] == 2 * moe.params
    vl4b = published(QWEN3_VL_4B)
    gpu, _ = zero3_model_states(vl4b.params, vl4b.largest_layer_params, 8, 1, False, False)
    assert gpu == 4 * 388_956_160 + int(18 * 4_437_815_808 / 8)  # 10.7 GiB
    offloaded, _ = zero3_model_states(vl4b.params, vl4b.largest_layer_params, 8, 1, True, True)
    assert offloaded == 4 * 388_956_160


def test_gradient_checkpointing_keeps_one_hidden_state_a_layer():
    vl4b = published(QWEN3_VL_4B)
    per_layer = 2 * (5 * 2560 + 2 * 32 * 128 + 2 * 8 * 128 + 4 * 9728)  # 123,904 bytes a token
    assert activation_bytes(vl4b, 8192, checkpointing=False) == 8192 * 36 * per_layer  # 34 GiB
    assert activation_bytes(vl4b, 8192, checkpointing=True) == 8192 * (36 * 2 * 2560 + per_layer)  # 2.4


def test_shapes_are_read_from_a_checkpoints_config_json_as_transformers_builds_the_model(tmp_path):
    import torch
    from transformers import Qwen3VLForConditionalGeneration, Qwen3VLMoeForConditionalGeneration

    from prism.core.config import TinyModel
    from prism.data.tiny import build_tokenizer, dense_config
    from prism.discriminator.upcycle import moe_config

    config = dense_config(TinyModel(), build_tokenizer())
    config.save_pretrained(tmp_path)  # the config.json a checkpoint carries
    from prism.cluster.memory import model_config_json

    read, source = model_config_json(None, tmp_path)
    assert source == str(tmp_path / "config.json")
    torch.manual_seed(0)
    dense = Qwen3VLForConditionalGeneration(config)
    assert architecture(read, source).params == sum(p.numel() for p in dense.parameters())
    moe = Qwen3VLMoeForConditionalGeneration(moe_config(config, 4, 2, 0.01))
    estimated = architecture(upcycled(read, 4, 2), "upcycled")
    assert estimated.params == sum(p.numel() for p in moe.parameters())
    assert estimated.experts_per_token == 2


def cli(workflow, command: str, overlay: dict) -> subprocess.CompletedProcess:
    configfile = write_config(workflow, "memory.yaml", overlay)
    args = [
        sys.executable,
        "-m",
        "prism.cli",
        command,
        "--directory",
        str(workflow),
        "--configfile",
        configfile,
    ]
    environment = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"} | {"HF_HOME": str(workflow / "h")}
    return subprocess.run(args, capture_output=True, text=True, env=environment, timeout=300)


def test_plan_puts_a_per_gpu_figure_beside_each_gpu_stage_and_marks_what_does_not_fit(workflow_copy):
    result = cli(workflow_copy, "plan", {"cluster": {"gpu_memory_gb": 40}})
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.split("\n\n")[0].splitlines()
    assert "GiB/GPU" in header.split()
    columns = {row.split()[0]: row.split() for row in rows[:-1]}  # stage, jobs, GPUs/job, nodes, GPU-h
    gpu_stages = {rule for rule, cells in columns.items() if cells[2] != "0" and rule != "upcycle"}
    assert {"sft", "warmup_discriminator", "align", "rl"} <= gpu_stages  # upcycle runs on the CPU
    for rule in gpu_stages:
        assert columns[rule][5].isdigit(), columns[rule]
    assert columns["fetch_model"][5] == "-"
    assert "against cluster.gpu_memory_gb=40" in result.stdout
    assert "sft (qwen3-vl-8b): " in result.stdout and "DOES NOT FIT" in result.stdout
    assert columns["sft"][6] == "!" and int(columns["sft"][5]) > 40
    assert "ZeRO-3 model states (ds_z3.json)" in result.stdout and "deepspeed" in result.stdout


def test_preflight_refuses_stage2_without_a_bounded_context_at_a_quarter_of_the_gpu(workflow_copy):
    overlay = {
        "cluster": {"account": "lab"},
        "paths": {"disk_gb": {"results": 0.001, "work": 0.001, "hf_cache": 0}},
        # a 262,144-token context: what vLLM takes from Qwen3-VL's config when nothing bounds it
        "align": {"max_prompt_length": 2048, "max_response_length": 260_096},
    }
    result = cli(workflow_copy, "preflight", overlay)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    refusal = next(line for line in result.stderr.splitlines() if "align (qwen3-vl-4b)" in line)
    assert refusal.startswith(
        "  - align (qwen3-vl-4b): vLLM will refuse to start: align.verl.rollout_gpu_memory_utilization=0.25 "
        "leaves 8.6 GiB of KV cache but one max_model_len=262144 request needs 36.0 GiB; "
    )
    assert "align.max_prompt_length + max_response_length (verl's rollout.max_model_len)" in refusal
    assert "align (qwen3-vl-8b): vLLM will refuse to start" in result.stderr


def test_tiny_plan_estimates_nothing_on_the_cpu_engines():
    from prism.cluster.memory import estimates
    from prism.cluster.plan import plan_jobs
    from prism.cluster.preflight import read_config
    from prism.core.config import load_config

    configfiles = [str(ROOT / "config/tiny.yaml")]
    cfg = load_config(read_config(ROOT, configfiles)[0])
    jobs = plan_jobs(ROOT, configfiles, ["all"], forceall=True)
    assert any(job.gpus for job in jobs) and estimates(cfg, ROOT, jobs) == []


def test_calibration_reads_snakemakes_own_benchmark_records_beside_the_plan(workflow_copy, tmp_path):
    from prism.cluster.memory import read_benchmark
    from prism.core.manifest import peak_memory, peak_memory_per_rank

    run = tmp_path / "run"
    run.mkdir()
    (run / "hold.py").write_text("import time\nheld = b'x' * 300_000_000\ntime.sleep(1.5)\n")
    (run / "Snakefile").write_text(
        'rule hold:\n    output: "out.txt"\n    benchmark: "bench.tsv"\n'
        '    shell: "python hold.py && touch {output}"\n'
    )
    snakemake = [str(Path(sys.executable).with_name("snakemake")), "-c1", "-d", str(run)]
    finished = subprocess.run([*snakemake, "-s", str(run / "Snakefile")], capture_output=True)
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]
    wall, rss = read_benchmark(run / "bench.tsv")
    assert wall >= 1.5 and rss >= 280  # MB: the 300 MB the job held
    # the record where the paper plan's first SFT job writes its benchmark
    record = run / "results/benchmarks/sft/qwen3-vl-4b.tsv"
    record.parent.mkdir(parents=True)
    record.write_bytes((run / "bench.tsv").read_bytes())
    # and the per-rank peaks its engine wrote in its manifest, as the warmup writes them on CPU
    manifest = run / "results/models/sft/qwen3-vl-4b/manifest.json"
    manifest.parent.mkdir(parents=True)
    ranks = [peak_memory(), {"host_rss_gib": 0.5}]
    manifest.write_text(json.dumps({"metrics": {"peak_memory": peak_memory_per_rank(ranks)}}))
    # an evaluation job's: NVML's memory in use on its two GPUs (the judge's and the policy's vLLM)
    evaluation = run / "results/eval/qwen3-vl-4b/instruct"
    evaluation.mkdir(parents=True)
    (evaluation / "manifest.json").write_text(
        json.dumps({"metrics": {"mathvista": 60.0, "peak_memory": {"gpu_used_gib": [131.2, 75.5]}}})
    )
    eval_record = run / "results/benchmarks/eval/qwen3-vl-4b/instruct.tsv"
    eval_record.parent.mkdir(parents=True)
    eval_record.write_bytes((run / "bench.tsv").read_bytes())
    args = [
        sys.executable,
        "-m",
        "prism.cli",
        "plan",
        "--directory",
        str(workflow_copy),
        "--calibrate",
        str(run),
    ]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    measured = result.stdout.split("Measured in")[1].splitlines()
    row = next(line.split() for line in measured if line.startswith("sft "))
    assert row[:2] == ["sft", "1/2"]  # one of the two SFT jobs measured
    assert float(row[2]) == pytest.approx(wall / 3600, abs=0.01) and float(row[3]) == 48.0
    assert float(row[4]) == pytest.approx(rss / 1024, abs=0.01) and row[6:8] == ["-", "-"]
    assert float(row[9]) == pytest.approx(max(rank["host_rss_gib"] for rank in ranks), abs=0.01)
    row = next(line.split() for line in measured if line.startswith("evaluate "))
    assert row[6:8] == ["-", "131.2"] and row[9] == "-"  # in use, not torch's allocated peak


# Stands in for nvidia-smi on a node of three GPUs: each call prints the next of three samples of
# `--query-gpu=index,uuid,memory.used --format=csv,noheader,nounits`, then the last one again.
FAKE_NVIDIA_SMI = """#!/bin/sh
[ "$1 $2" = "--query-gpu=index,uuid,memory.used --format=csv,noheader,nounits" ] || exit 2
calls=$(cat "$0.calls" 2>/dev/null || echo 0); echo $((calls + 1)) > "$0.calls"
case $calls in
  0) echo "0, GPU-aaa, 1024"; echo "1, GPU-bbb, 500"; echo "2, GPU-ccc, 2048" ;;
  1) echo "0, GPU-aaa, 61440"; echo "1, GPU-bbb, 900"; echo "2, GPU-ccc, 40960" ;;
  *) echo "0, GPU-aaa, 30720"; echo "1, GPU-bbb, 100"; echo "2, GPU-ccc, 51200" ;;
esac
"""


def test_an_evaluation_records_each_gpu_s_peak_in_use_or_its_largest_child_s_rss(tmp_path, monkeypatch):
    """The evaluation engine's peaks: NVML's memory in use per GPU of the job (named by index or UUID, as
    CUDA_VISIBLE_DEVICES names them), the most of any sample; with no GPU to ask, its children's RSS."""
    import time

    from prism.eval.lmms import MemoryPeaks

    smi = tmp_path / "nvidia-smi"
    smi.write_text(FAKE_NVIDIA_SMI)
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    calls = tmp_path / "nvidia-smi.calls"
    with MemoryPeaks(["2", "GPU-aaa"], interval_s=0.01) as peaks:
        while not calls.is_file() or int(calls.read_text() or 0) < 4:
            time.sleep(0.01)
    assert peaks.record() == {"gpu_used_gib": [50.0, 60.0]}  # GPU 2's third sample, GPU 0's second

    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no nvidia-smi
    with MemoryPeaks(["0"]) as peaks:
        subprocess.run([sys.executable, "-c", "held = b'x' * 300_000_000"], check=True)
    assert list(peaks.record()) == ["child_rss_gib"] and peaks.record()["child_rss_gib"][0] > 0.27


def test_the_data_a_job_holds_is_part_of_its_host_need_checked_by_hand(paper_config, tmp_path):
    """Per node, our estimate: RL's trainer decodes 8 workers x 2 prefetched + 1 batches of 32 prompts,
    an image each of at most max_prompt_length=2048 visual tokens (1024 pixels a token, 27 bytes a pixel:
    RGB and float32 pixel_values over 2 frames), and holds the prepared parquet twice (train, val); SFT's
    8 ranks decode 4 workers x 2 + 1 batches of 2 images at image_max_pixels; the warmup's 8 ranks one
    batch of 4 pairs x 2 sequences at max_pixels."""
    from prism.cluster.memory import Estimator, Job
    from prism.core.config import load_config

    parquet = tmp_path / "results/data/rl/train.parquet"  # the prepared set, where the plan looks for it
    parquet.parent.mkdir(parents=True)
    parquet.write_bytes(b"\0" * 3_000_000)
    estimator = Estimator(load_config(paper_config), tmp_path)

    rl = estimator.estimate(Job("rl", {"policy": "qwen3-vl-4b", "algo": "grpo"}, 8, 1, 800_000))
    images = (8 * 2 + 1) * 32 * 2048 * 1024 * 27  # 30.8 GB
    assert rl.parts["host: images in flight, 17 batches x 32 at <= 2048 tokens, per node"][0] == images
    assert rl.parts["host: prepared rl set, twice (train, val), per node"][0] == 6_000_000
    states = rl.parts["host: offloaded states and parked vLLM weights, per node"][0]
    assert rl.host_bytes == states + images + 6_000_000 and rl.fits

    # a mem_mb the states fit in but not the data as well
    short = int((states + images / 2) / 1024**2)
    refused = estimator.estimate(Job("rl", {"policy": "qwen3-vl-4b", "algo": "grpo"}, 8, 1, short))
    assert refused.problems == [
        f"rl (qwen3-vl-4b grpo): holds about {(states + images + 6e6) / GIB:.0f} GiB of host memory per node "
        f"but asks Slurm for mem_mb={short}; raise its resources.mem_mb or offload less"
    ]

    sft = estimator.estimate(Job("sft", {"policy": "qwen3-vl-4b"}, 8, 1, 800_000))
    assert sft.parts["host: images in flight, 8 ranks x 9 batches x 2 at 1605632 px, per node"][0] == (
        8 * 9 * 2 * 1_605_632 * 27  # 6.2 GB
    )
    warmup = estimator.estimate(Job("warmup_discriminator", {}, 8, 1, 800_000))
    assert warmup.parts["host: images decoded, 8 ranks x 8 at 313600 px, per node"][0] == 8 * 8 * 313_600 * 27
