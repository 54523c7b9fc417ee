"""`prism preflight`: every problem that would stop a submitted run, listed at once, before any GPU job."""

import os
import subprocess
import sys
from types import SimpleNamespace

from conftest import SECRETS, write_config
from prism.cluster.preflight import disk_problems


def preflight(workflow, overlay: dict, **env) -> subprocess.CompletedProcess:
    configfile = write_config(workflow, "site.yaml", overlay)
    command = [sys.executable, "-m", "prism.cli", "preflight", "--directory", str(workflow)]
    command += ["--configfile", configfile, "--workflow-profile", str(workflow / "profiles/slurm")]
    environment = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    environment.update(HF_HOME=str(workflow / "hf-home"), **env)  # no login cache either
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=120)


GATED_WARMUP = {"data": {"warmup": {"hf": {"gated": True}}}}
# GPUs that hold every stage, so that these cases list only their own problems (memory: test_memory.py)
ROOMY_GPUS = {"gpu_memory_gb": 1000}


def test_every_problem_is_listed_at_once(workflow_copy):
    overlay = {
        "cluster": {"partition": "", **ROOMY_GPUS},
        "paths": {"disk_gb": {"work": 1e9}},
        **GATED_WARMUP,
    }
    result = preflight(workflow_copy, overlay)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "4 problem(s)" in result.stderr
    for expected in (
        "cluster.partition is empty but the Slurm profile submits GPU jobs (align, evaluate_benchmark, rl, "
        "sft,",
        "cluster.account is empty",
        "paths.disk_gb.work (1e+09)",
        "gated repos ['prism-vlm/qwen3_vl_moe_warmup_pairwise_120k'] and the benchmarks (lmms-eval's tasks "
        "ask for one) will be downloaded but no Hugging Face token was found; set HF_TOKEN",
    ):
        assert expected in result.stderr


def test_a_ready_site_passes_and_the_token_is_never_shown(workflow_copy):
    overlay = {
        "cluster": {"account": "lab", **ROOMY_GPUS},
        "paths": {"disk_gb": {"results": 0.001, "work": 0.001, "hf_cache": 0}},
        **GATED_WARMUP,
    }
    result = preflight(workflow_copy, overlay, HF_TOKEN=SECRETS["HF_TOKEN"])
    assert result.returncode == 0, result.stderr
    assert "in order" in result.stdout
    assert SECRETS["HF_TOKEN"] not in result.stdout + result.stderr


def test_paths_on_one_file_system_must_fit_together(tmp_path):
    from shutil import disk_usage

    half = disk_usage(tmp_path).free / 1024**3 * 0.6
    paths = SimpleNamespace(
        results=str(tmp_path / "results"),
        work=str(tmp_path / "work"),
        hf_cache=str(tmp_path / "hf"),
        disk_gb=SimpleNamespace(results=half, work=half, hf_cache=0),
    )
    problems = disk_problems(SimpleNamespace(paths=paths), tmp_path)
    assert (
        len(problems) == 1 and "paths.disk_gb.results" in problems[0] and "paths.disk_gb.work" in problems[0]
    )
    paths.disk_gb.work = 0
    assert disk_problems(SimpleNamespace(paths=paths), tmp_path) == []


def test_a_slurm_profile_that_deploys_no_software_is_refused(workflow_copy):
    profile = workflow_copy / "profiles/slurm/profile.yaml"
    profile.write_text(profile.read_text().replace("software-deployment-method: conda\n", ""))
    result = preflight(workflow_copy, {"cluster": {"account": "lab", **ROOMY_GPUS}}, HF_TOKEN="hf_x")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "profiles/slurm/profile.yaml submits to Slurm but deploys no software" in result.stderr
    assert "add `software-deployment-method: conda` to the profile" in result.stderr
