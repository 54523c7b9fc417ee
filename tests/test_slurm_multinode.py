"""The Ray launcher of the multi-node verl stages as Snakemake really runs it on Slurm: submitted by the
executor plugin with the `mpi` resource the multi-node rules use, run by the plugin's own job step, which
removes every SLURM_* variable but the job's id before the rule's command starts. The test cluster has one
node, so a job that expects two must stop and name both counts."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT, TEST_CLUSTER, merged_tiny_config

pytestmark = pytest.mark.slurm

PROBE = "import os, ray; ray.init(); print('attached', int(ray.cluster_resources()['CPU']))"


def snakefile(partition: str) -> str:
    launcher = f"{sys.executable} -m prism.cluster.ray_cluster --cpus-per-node 1 --gpus-per-node 0"
    return textwrap.dedent(f"""
        rule ray_job:
            output: "{{nodes}}-nodes.txt"
            log: "{{nodes}}-nodes.log"
            resources: nodes=1, tasks=2, mpi="srun", cpus_per_task=1, mem_mb=1000, runtime=10,
                slurm_partition="{partition}"
            shell:
                "(env | grep ^SLURM_ | sort; {launcher} --nodes {{wildcards.nodes}} -- "
                "{sys.executable} -c \\"{PROBE}\\") > {{log}} 2>&1 && cp {{log}} {{output}}"
        """)


def test_the_launcher_finds_the_allocation_inside_the_job_step_and_checks_the_node_count(slurm, tmp_path):
    (tmp_path / "Snakefile").write_text(snakefile(merged_tiny_config()["cluster"]["partition"]))
    command = [str(Path(sys.executable).with_name("snakemake"))]
    command += ["1-nodes.txt", "2-nodes.txt", "--executor", "slurm", "--jobs", "2", "--keep-going"]
    command += [*TEST_CLUSTER, "--slurm-keep-successful-logs", "--workflow-profile", "none"]
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=900,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    one, two = (tmp_path / "1-nodes.log").read_text(), (tmp_path / "2-nodes.log").read_text()
    # the job step's environment: the job's id, no node list
    assert re.search(r"^SLURM_JOB_ID=\d+$", one, re.MULTILINE) and "SLURM_JOB_NODELIST" not in one
    # the nodes asked from Slurm by job id: the test node's name, not this machine's host name
    assert "ray: head at " in one and " on localhost, workers on no other node" in one, one[-2000:]
    assert "ray: 1 of 1 nodes joined" in one and "attached 1" in one and "ray: cluster stopped" in one
    assert "the allocation has 1 node(s) (localhost) but 2 were expected" in two, two[-2000:]
    assert result.returncode != 0 and (tmp_path / "1-nodes.txt").exists()
    assert not (tmp_path / "2-nodes.txt").exists()
    jobs = subprocess.run(
        ["squeue", "-h", "--states=all", "-o", "%i|%k|%D|%N|%T"], capture_output=True, text=True, check=True
    ).stdout
    records = [line for line in jobs.splitlines() if "rule_ray_job" in line]
    print("\n".join(records))
    assert {r.split("|")[2] for r in records} == {"1"} and len(records) >= 2
