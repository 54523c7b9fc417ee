"""The Ray-in-Slurm launcher: the command runs attached to a cluster of the allocation's nodes, and Ray is
gone afterwards, whether the command succeeded, failed, or a node never joined."""

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

from prism.cluster.ray_cluster import allocation_nodes, worker_command

# What Snakemake's Slurm job step leaves of Slurm's variables (snakemake-executor-plugin-slurm-jobstep
# 0.6.1 keeps the job and array ids, the cluster name and the submit dir/host): no SLURM_JOB_NODELIST.
JOB_RECORD = (
    "JobId={job} JobName=rl\n   NumNodes={count} NumCPUs=4 CPUs/Task=2 ReqB:S:C:T=0:0:*:*\n"
    "   ReqNodeList=(null) ExcNodeList=(null)\n   NodeList={nodelist}\n   BatchHost={head}\n"
)
HOST = os.uname().nodename
JOB_NUMBERS = itertools.count()
PROBE = (
    "import os, ray; ray.init(); "
    "print('attached', os.environ['RAY_ADDRESS'], int(ray.cluster_resources()['CPU'])); raise SystemExit(3)"
)


def processes_of(job: str) -> str:
    """Processes of a launcher's cluster: they all name its job-specific temp dir."""
    return subprocess.run(["pgrep", "-af", f"/tmp/ray_{job}/"], capture_output=True, text=True).stdout


def launch(*command: str, env: dict, nodes: int = 1, join_timeout: int = 120) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "prism.cluster.ray_cluster", "--nodes", str(nodes)]
    argv += ["--cpus-per-node", "2", "--gpus-per-node", "0", "--join-timeout", str(join_timeout)]
    return subprocess.run([*argv, "--", *command], capture_output=True, text=True, env=env, timeout=300)


def fake_slurm(tmp_path: Path, srun: str, two_nodes: bool = True) -> dict:
    """A job as the job step sees it: scontrol answering for the job id with a record whose nodes expand to
    this host (and a second one); srun running `srun` (a shell snippet) for a worker."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    job = f"prism-test-{os.getpid()}-{next(JOB_NUMBERS)}"  # short: Ray's socket paths under /tmp/ray_<job>
    nodelist, hosts = ("gpu-[a-b]", f"{HOST} gpu-b") if two_nodes else (HOST, HOST)
    record = JOB_RECORD.format(job=job, count=len(hosts.split()), nodelist=nodelist, head=HOST)
    (bin_dir / "scontrol").write_text(
        "#!/bin/sh\n"
        f'if [ "$1 $2" = "show job" ] && [ "$3" = {job} ]; then printf "{record}"; exit 0; fi\n'
        f'if [ "$*" = "show hostnames {nodelist}" ]; then printf "%s\\n" {hosts}; exit 0; fi\n'
        "exit 1\n"
    )
    (bin_dir / "srun").write_text(f'#!/bin/sh\necho "srun $*" >> {tmp_path}/srun.log\n{srun}\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return environ | {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": job}


def test_command_runs_attached_to_the_cluster_and_ray_stops_after(tmp_path):
    env = fake_slurm(tmp_path, srun="exit 1", two_nodes=False)
    job = env["SLURM_JOB_ID"]
    result = launch(sys.executable, "-c", PROBE, env=env)
    assert result.returncode == 3, result.stderr  # the command's own status
    assert "ray: 1 of 1 nodes joined" in result.stdout
    address, cpus = re.search(r"^attached (\S+) (\d+)$", result.stdout, re.MULTILINE).groups()
    assert f"ray: head at {address} " in result.stdout and cpus == "2"
    assert not processes_of(job)


def test_a_worker_that_fails_stops_the_job_and_the_head(tmp_path):
    env = fake_slurm(tmp_path, srun="exit 1")
    result = launch(sys.executable, "-c", "print('ran')", env=env, nodes=2)
    assert result.returncode != 0 and "ran" not in result.stdout
    assert "a Ray process exited while the cluster was starting" in result.stderr
    assert "--nodelist=gpu-b" in (tmp_path / "srun.log").read_text()
    assert not processes_of(env["SLURM_JOB_ID"])


def test_a_node_that_never_joins_stops_the_job_with_both_counts(tmp_path):
    env = fake_slurm(tmp_path, srun="exec sleep 600")
    result = launch(sys.executable, "-c", "print('ran')", env=env, nodes=2, join_timeout=5)
    assert result.returncode != 0 and "ran" not in result.stdout
    assert "only 1 of 2 nodes joined the Ray cluster" in result.stderr
    assert not processes_of(env["SLURM_JOB_ID"])


def test_an_allocation_with_other_than_the_expected_nodes_stops_before_ray_starts(tmp_path):
    env = fake_slurm(tmp_path, srun="exit 0")
    result = launch(sys.executable, "-c", "print('ran')", env=env, nodes=4)
    assert result.returncode != 0 and "ran" not in result.stdout
    assert f"the allocation has 2 node(s) ({HOST}, gpu-b) but 4 were expected" in result.stderr
    assert not (tmp_path / "srun.log").exists()


def test_nodes_come_from_slurm_by_job_id_inside_the_job_step(tmp_path):
    env = fake_slurm(tmp_path, srun="exit 0") | {"PATH": str(tmp_path / "bin")}
    assert "SLURM_JOB_NODELIST" not in env
    assert allocation_nodes(env) == [HOST, "gpu-b"]


def test_worker_steps_ask_for_their_cpus_and_gpus():
    worker = worker_command("gpu-b", "10.0.0.1:6380", cpus=64, gpus=8)
    assert worker[:7] == [
        "srun", "--nodes=1", "--ntasks=1", "--cpus-per-task=64", "--gres=gpu:8", "--overlap",
        "--nodelist=gpu-b",
    ]  # fmt: skip
    assert worker[-7:] == ["--address", "10.0.0.1:6380", "--num-cpus", "64", "--num-gpus", "8", "--block"]
    assert "--gres=gpu:0" not in worker_command("gpu-b", "10.0.0.1:6380", cpus=2, gpus=0)
