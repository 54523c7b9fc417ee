"""The Ray-in-Slurm launcher: the command runs attached to a cluster of the allocation's nodes, and Ray is
gone afterwards, whether the command succeeded, failed, or a node never joined."""

import os
import re
import subprocess
import sys
from pathlib import Path

from prism.cluster.ray_cluster import allocation_nodes, worker_command

PROBE = (
    "import os, ray; ray.init(); "
    "print('attached', os.environ['RAY_ADDRESS'], int(ray.cluster_resources()['CPU'])); raise SystemExit(3)"
)


def processes_of(job: str) -> str:
    """Processes of a launcher's cluster: they all name its job-specific temp dir."""
    return subprocess.run(["pgrep", "-af", f"/tmp/ray_{job}/"], capture_output=True, text=True).stdout


def launch(*command: str, env: dict) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "prism.cluster.ray_cluster", "--cpus-per-node", "2", "--gpus-per-node", "0"]
    return subprocess.run(
        [*argv, "--join-timeout", "120", "--", *command], capture_output=True, text=True, env=env, timeout=300
    )


def fake_slurm(tmp_path: Path, srun_exit: int) -> dict:
    """scontrol expanding a two-node list to this host and a second one; srun failing like a lost node."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho {os.uname().nodename}\necho gpu-b\n")
    (bin_dir / "srun").write_text(f'#!/bin/sh\necho "srun $*" >> {tmp_path}/srun.log\nexit {srun_exit}\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return os.environ | {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "gpu-[a-b]",
        "SLURM_JOB_ID": f"prism-test-{os.getpid()}-b",
    }


def test_command_runs_attached_to_the_cluster_and_ray_stops_after():
    job = f"prism-test-{os.getpid()}-a"
    result = launch(sys.executable, "-c", PROBE, env=os.environ | {"SLURM_JOB_ID": job})
    assert result.returncode == 3, result.stderr  # the command's own status
    assert "ray: 1 of 1 nodes joined" in result.stdout
    address, cpus = re.search(r"^attached (\S+) (\d+)$", result.stdout, re.MULTILINE).groups()
    assert f"ray: head at {address} " in result.stdout and cpus == "2"
    assert not processes_of(job)


def test_a_node_that_never_joins_stops_the_job_and_the_head(tmp_path):
    env = fake_slurm(tmp_path, srun_exit=1)
    result = launch(sys.executable, "-c", "print('ran')", env=env)
    assert result.returncode != 0 and "ran" not in result.stdout
    assert "a Ray process exited while the cluster was starting" in result.stderr
    assert "--nodelist=gpu-b" in (tmp_path / "srun.log").read_text()
    assert not processes_of(env["SLURM_JOB_ID"])


def test_nodes_come_from_the_expanded_slurm_node_list(tmp_path):
    assert allocation_nodes(fake_slurm(tmp_path, srun_exit=0) | {"PATH": str(tmp_path / "bin")}) == [
        os.uname().nodename,
        "gpu-b",
    ]
    worker = worker_command("gpu-b", "10.0.0.1:6380", cpus=64, gpus=8)
    assert worker[:5] == ["srun", "--nodes=1", "--ntasks=1", "--overlap", "--nodelist=gpu-b"]
    assert worker[-7:] == ["--address", "10.0.0.1:6380", "--num-cpus", "64", "--num-gpus", "8", "--block"]
