"""The tiny pipeline under a real one-node Slurm (tests/slurm/start.sh) with the project's Slurm profile:
every GPU rule is scheduled on fake H100s with the request the config makes, and a job preempted in the
middle of training is retried by the profile and resumes from its checkpoint, redoing nothing.

Skipped where Slurm cannot start (not root, no apt-get); PRISM_REQUIRE_SLURM=1 (set by CI) fails instead."""

import csv
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import ROOT, TARGETS, TEST_CLUSTER, TINY, merged_tiny_config, snakemake, write_config
from prism.cluster.plan import plan_jobs
from prism.core.config import BENCHMARKS

pytestmark = pytest.mark.slurm
RESULTS = "tiny/results"  # config/tiny.yaml's paths
# Where each Slurm rule's request lives in the config.
STAGE_RESOURCES = {
    "prepare_dataset": ("data",),
    "sft": ("sft",),
    "upcycle": ("discriminator", "upcycle"),
    "warmup_discriminator": ("discriminator", "warmup"),
    "warmup_dense_discriminator": ("discriminator", "warmup"),
    "warmup_text_only_discriminator": ("discriminator", "warmup"),
    "sft_subset": ("sft",),
    "align": ("align",),
    "align_ablation": ("align",),
    "rl": ("rl",),
    "rl_ablation": ("rl",),
    "evaluate": ("eval",),
}


@pytest.fixture(scope="module")
def cluster(slurm):
    return slurm


def slurm_jobs(workdir: Path) -> dict[str, dict]:
    """Slurm's own record of every job submitted from `workdir`, by job id (`scontrol show job`)."""
    listing = subprocess.run(["scontrol", "show", "job", "--oneliner"], capture_output=True, text=True)
    jobs = {}
    for line in listing.stdout.splitlines():
        job = dict(field.split("=", 1) for field in line.split() if "=" in field)
        if job.get("WorkDir") == str(workdir):
            job["rule"], _, job["wildcards"] = (
                job.get("Comment", "").removeprefix("rule_").partition("_wildcards_")
            )
            jobs[job["JobId"]] = job
    return jobs


@pytest.fixture(scope="module")
def slurm_run(cluster, tiny_run):
    """The session's tiny run, submitted through this Slurm: its workdir, Slurm's records, its table."""
    workdir = tiny_run
    with (workdir / RESULTS / "tables/main.csv").open() as handle:
        table = list(csv.reader(handle))
    return workdir, slurm_jobs(workdir), table


def test_every_gpu_job_ran_on_slurm_and_completed(slurm_run):
    workdir, jobs, _ = slurm_run
    planned = plan_jobs(workdir, [workdir / "config/tiny.yaml"], TARGETS, forceall=True)
    assert Counter(j["rule"] for j in jobs.values()) == Counter(p.rule for p in planned if not p.local)
    assert {(j["JobState"], j["ExitCode"], j["Restarts"]) for j in jobs.values()} == {
        ("COMPLETED", "0:0", "0")
    }


def megabytes(size: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([MGT])", size).groups()
    return int(number) * 1024 ** "MGT".index(unit)


def minutes(limit: str) -> int:
    days, _, clock = limit.rpartition("-")
    hours, mins, _ = map(int, clock.split(":"))
    return int(days or 0) * 24 * 60 + hours * 60 + mins


def test_slurm_granted_each_job_the_request_its_stage_makes_in_the_config(slurm_run):
    _, jobs, _ = slurm_run
    config = merged_tiny_config()
    cluster = config["cluster"]
    for job in jobs.values():
        section = config
        for key in STAGE_RESOURCES[job["rule"]]:
            section = section[key]
        wanted = section["resources"]
        granted = {
            "partition": job["Partition"],
            "gpus": job.get("TresPerJob"),
            "minutes": minutes(job["TimeLimit"]),
            "mem_mb": megabytes(job["MinMemoryNode"]),
            "cpus_per_task": int(job["CPUs/Task"]),
            "nodes": int(job["NumNodes"]),
        }
        assert granted == {
            "partition": cluster["partition"],
            "gpus": f"gres:gpu:{cluster['gpu_model']}:{wanted['gpus']}" if wanted.get("gpus") else None,
            "minutes": round(wanted["hours"] * 60),
            "mem_mb": wanted["mem_mb"],
            "cpus_per_task": wanted["cpus_per_task"],
            "nodes": wanted.get("nodes", 1),
        }, job["rule"]


def test_table_has_the_structure_of_a_local_run(slurm_run):
    _, _, table = slurm_run
    config = merged_tiny_config()
    header = ["policy", "variant", *(BENCHMARKS[b] for b in config["eval"]["benchmarks"]), "Avg"]
    assert table[0] == header
    variants = [(p["name"], v) for p in config["policies"] for v in config["eval"]["variants"]]
    assert [tuple(row[:2]) for row in table[1:]] == variants
    assert all(re.fullmatch(r"\d+\.\d", value) for row in table[1:] for value in row[2:])


@contextmanager
def preempted_after_checkpoint(comment: str, work: Path):
    """While the block runs, cancel the job `comment` as a preemption would, once it has checkpointed."""
    since, done, cancelled = time.time(), threading.Event(), []

    def watch():
        while not done.wait(0.5):
            if not any(p.stat().st_mtime > since for p in work.glob("*/state.pt")):
                continue
            running = subprocess.run(["squeue", "-h", "-t", "running", "-o", "%i %k"], capture_output=True)
            for job_id, job_comment in (line.split() for line in running.stdout.decode().splitlines()):
                if job_comment == comment:
                    subprocess.run(["scancel", job_id], check=True)
                    cancelled.append(job_id)
                    return

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield cancelled
    finally:
        done.set()
        watcher.join()


def manifests(workdir: Path) -> dict[str, int]:
    return {
        str(p.relative_to(workdir)): p.stat().st_mtime_ns for p in workdir.glob(f"{RESULTS}/**/manifest.json")
    }


def test_a_preempted_job_is_retried_and_resumes_without_redoing_finished_work(slurm_run):
    workdir, first_run, _ = slurm_run
    # A new DAPO setting reruns its two RL runs and their evaluations; the PRISM-initialised one is
    # cancelled while it trains, and the profile's retries have to bring the pipeline to the end.
    overlay = write_config(workdir, "dapo.yaml", {"rl": {"algorithm": {"dapo": {"clip_ratio_high": 0.3}}}})
    before = manifests(workdir)
    with preempted_after_checkpoint(
        "rule_rl_wildcards_tiny_prism_dapo", workdir / "tiny/work/rl/tiny/prism-dapo"
    ) as cancelled:
        result = snakemake(
            workdir, "--workflow-profile", "profiles/slurm", *TINY, overlay, *TEST_CLUSTER, timeout=1200
        )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert len(cancelled) == 1

    rerun = [j for i, j in slurm_jobs(workdir).items() if i not in first_run]
    assert Counter((j["rule"], j["wildcards"], j["JobState"]) for j in rerun) == {
        ("rl", "tiny_prism_dapo", "CANCELLED"): 1,
        ("rl", "tiny_prism_dapo", "COMPLETED"): 1,
        ("rl", "tiny_sft_dapo", "COMPLETED"): 1,
        ("evaluate", "tiny_prism-dapo", "COMPLETED"): 1,
        ("evaluate", "tiny_sft-dapo", "COMPLETED"): 1,
    }
    after = manifests(workdir)
    assert {path for path in after if after[path] != before[path]} == {
        f"{RESULTS}/models/rl/tiny/prism-dapo/manifest.json",
        f"{RESULTS}/models/rl/tiny/sft-dapo/manifest.json",
        f"{RESULTS}/eval/tiny/prism-dapo/manifest.json",
        f"{RESULTS}/eval/tiny/sft-dapo/manifest.json",
    }
    # The retry picked up from the checkpoint the cancelled attempt saved, and ran only the steps after it.
    log = (workdir / RESULTS / "logs/rl/tiny/prism-dapo.log").read_text()
    resumed = int(re.search(r"resumed from step (\d+)", log).group(1))
    steps = [int(s) for s in re.findall(r"^step (\d+)/", log, re.MULTILINE)]
    assert resumed > 0 and steps == list(range(resumed + 1, merged_tiny_config()["rl"]["steps"] + 1))


def test_the_ray_launcher_brings_up_ray_in_a_slurm_job_and_tears_it_down(cluster):
    """The multi-node path of the verl stages (prism/cluster/ray_cluster.py) inside a real allocation,
    with nodes=1: the head on the allocation's node, the command attached to it, nothing left after."""
    probe = (
        "import os, ray; ray.init(); "
        "print('attached', os.environ['SLURM_JOB_ID'], int(ray.cluster_resources().get('GPU', 0)))"
    )
    launcher = [sys.executable, "-m", "prism.cluster.ray_cluster", "--cpus-per-node", "1"]
    launcher += ["--gpus-per-node", "1"]
    gpu = f"--gpus={merged_tiny_config()['cluster']['gpu_model']}:1"
    result = subprocess.run(
        ["srun", "--nodes=1", "--ntasks=1", gpu, "--time=10", *launcher, "--", sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "ray: 1 of 1 nodes joined" in result.stdout and "ray: cluster stopped" in result.stdout
    job, gpus = re.search(r"^attached (\S+) (\d+)$", result.stdout, re.MULTILINE).groups()
    assert gpus == "1"
    leftover = subprocess.run(["pgrep", "-af", f"/tmp/ray_{job}/"], capture_output=True, text=True).stdout
    assert leftover == ""
