"""Run a command on a Ray cluster spanning the nodes of this Slurm allocation, then take the cluster down.

`python -m prism.cluster.ray_cluster --gpus-per-node 8 --cpus-per-node 64 -- python -m prism.rl ...`

The head runs here, on the allocation's first node; every other node gets a worker through `srun`. The
command starts once all nodes have joined, with RAY_ADDRESS pointing at the head so that verl attaches to
this cluster. Ray is stopped on exit, failure or a signal, and only the processes started here are stopped:
the head and the worker steps, never other jobs' Ray on a shared node (integration-reference §4). Outside
Slurm the cluster is this machine alone.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# The `ray` of this interpreter's environment, also when that environment is not activated.
RAY = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))


class RayClusterError(RuntimeError):
    pass


def allocation_nodes(environ=os.environ) -> list[str]:
    """Host names of the job's nodes, the head first. Inside Snakemake's job step only SLURM_JOB_ID is
    left of Slurm's variables (the jobstep plugin removes the others), so the node list is asked from
    Slurm by job id when SLURM_JOB_NODELIST is gone; outside Slurm the cluster is this machine. (The verl
    example's `nodes_array=("$nodes")` makes a one-element array of all names; scontrol expands the
    compressed list properly.)"""
    nodelist = environ.get("SLURM_JOB_NODELIST")
    job = environ.get("SLURM_JOB_ID")
    if not nodelist and job:
        nodelist = job_nodelist(job, environ)
    if not nodelist:
        return [socket.gethostname()]
    return scontrol(["show", "hostnames", nodelist], environ).split()


def scontrol(args: list[str], environ) -> str:
    return subprocess.run(["scontrol", *args], capture_output=True, text=True, check=True, env=environ).stdout


def job_nodelist(job: str, environ) -> str:
    """The compressed node list of a running job, from `scontrol show job` (its NodeList= field; the
    ReqNodeList= and ExcNodeList= fields are what was asked for, not what was given)."""
    record = scontrol(["show", "job", job], environ)
    match = re.search(r"(?:^|\s)NodeList=(\S+)", record)
    if not match or match.group(1) == "(null)":
        raise RayClusterError(f"Slurm job {job} has no nodes yet: {record.strip()[:300]}")
    return match.group(1)


def check_node_count(nodes: list[str], expected: int) -> None:
    if len(nodes) != expected:
        raise RayClusterError(
            f"the allocation has {len(nodes)} node(s) ({', '.join(nodes)}) but {expected} were expected; "
            "submit the job with as many nodes as its stage's resources.nodes"
        )


def node_address() -> str:
    """This node's address as the other nodes reach it (a host name may resolve to 127.0.1.1 here)."""
    from ray.util import get_node_ip_address

    return get_node_ip_address()


def free_port() -> int:
    """A free port for the head, so that two jobs sharing a node never collide on Ray's default 6379."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def resource_flags(cpus: int, gpus: int) -> list[str]:
    return ["--num-cpus", str(cpus), "--num-gpus", str(gpus), "--block"]


def head_command(address: str, port: int, cpus: int, gpus: int, temp_dir: Path) -> list[str]:
    """The head; its temp dir is job-specific so that its sockets never clash on a shared node."""
    return [
        RAY, "start", "--head", "--node-ip-address", address, "--port", str(port),
        "--include-dashboard", "false", "--temp-dir", str(temp_dir), *resource_flags(cpus, gpus),
    ]  # fmt: skip


def worker_command(node: str, head: str, cpus: int, gpus: int) -> list[str]:
    """A worker on one other node of the allocation, as a Slurm step that lives as long as we let it. Its
    CPUs and GPUs are explicit: in Snakemake's job step no SLURM_* default reaches srun."""
    gres = [f"--gres=gpu:{gpus}"] if gpus else []
    return [
        "srun", "--nodes=1", "--ntasks=1", f"--cpus-per-task={cpus}", *gres, "--overlap",
        f"--nodelist={node}", RAY, "start", "--address", head, *resource_flags(cpus, gpus),
    ]  # fmt: skip


def cluster_environment(head: str) -> dict:
    """What every process of this cluster shares: the head's address, and a token of this job alone.
    (Ray 2.60 turns token authentication on by itself when ~/.ray/auth_token exists, but a driver does
    not then send it: setting the mode and token for all of them keeps them consistent.)"""
    return os.environ | {
        "RAY_ADDRESS": head,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }


def alive_nodes(env: dict) -> int:
    """Nodes the head sees alive, asked from a throwaway driver process."""
    probe = "import ray; ray.init(logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    return (
        int(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 and result.stdout.strip() else 0
    )


def wait_for_nodes(env: dict, wanted: int, processes: list[subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        dead = [p.args for p in processes if p.poll() is not None]
        if dead:
            raise RayClusterError(f"a Ray process exited while the cluster was starting: {dead[0]}")
        joined = alive_nodes(env)
        print(f"ray: {joined} of {wanted} nodes joined", flush=True)
        if joined >= wanted:
            return
        if time.monotonic() > deadline:
            raise RayClusterError(
                f"only {joined} of {wanted} nodes joined the Ray cluster at {env['RAY_ADDRESS']} "
                f"within {timeout:.0f} s"
            )
        time.sleep(5)


def stop(processes: list[subprocess.Popen]) -> None:
    """Ask each `ray start --block` we started to stop its node (workers first), then clear what is left
    of its process group."""
    for process in reversed(processes):
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_on_cluster(command: list[str], nodes_expected: int, cpus: int, gpus: int, timeout: float) -> int:
    nodes = allocation_nodes()
    check_node_count(nodes, nodes_expected)
    address, port = node_address(), free_port()
    head = f"{address}:{port}"
    job = os.environ.get("SLURM_JOB_ID", str(os.getpid()))
    launch = [head_command(address, port, cpus, gpus, Path("/tmp") / f"ray_{job}")]
    launch += [worker_command(node, head, cpus, gpus) for node in nodes[1:]]
    print(f"ray: head at {head} on {nodes[0]}, workers on {nodes[1:] or 'no other node'}", flush=True)
    env = cluster_environment(head)
    processes: list[subprocess.Popen] = []
    # A Slurm cancellation or timeout sends SIGTERM: turn it into an exception so `finally` stops Ray.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        for argv in launch:
            processes.append(subprocess.Popen(argv, env=env, start_new_session=True))
        wait_for_nodes(env, len(nodes), processes, timeout)
        print(f"ray: running {' '.join(command)}", flush=True)
        return subprocess.run(command, env=env).returncode
    finally:
        stop(processes)
        print("ray: cluster stopped", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m prism.cluster.ray_cluster", description=__doc__)
    parser.add_argument("--nodes", type=int, default=1, help="nodes the job was given (its resources.nodes)")
    parser.add_argument("--cpus-per-node", type=int, required=True)
    parser.add_argument("--gpus-per-node", type=int, required=True)
    parser.add_argument("--join-timeout", type=float, default=300, help="seconds to wait for all nodes")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run on the head")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")
    try:
        code = run_on_cluster(command, args.nodes, args.cpus_per_node, args.gpus_per_node, args.join_timeout)
        sys.exit(code)
    except RayClusterError as err:
        sys.exit(f"ray_cluster: {err}")


if __name__ == "__main__":
    main()
