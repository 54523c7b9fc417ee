"""Resolve every envs/*.yaml as Snakemake + conda would install it, with pip's resolver, and fail on a
conflict or a source package that cannot build.

    python scripts/check_envs.py [--pip PIP] [envs/verl.yaml ...]

Conda channels are unreachable here, so this checks the pip side: the env file's pip list, which conda
hands to pip in one `pip install -r`, together with what the env's post-deploy script installs and the
package's own dependencies (pyproject.toml), on this machine's Linux x86_64 and Python 3.11 (the envs'
python=3.11) with the envs' pip, against PyPI alone (--isolated: no local index, wheel dir or
constraint). A package the post-deploy script builds without build isolation (flash-attn, whose build
imports torch) has its metadata built by --torch-python, an interpreter with torch, and its requirements
checked against the resolved env. Prints, per env, the time and the versions that matter.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from env_pins import canonical, pip_lines  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KEY_PACKAGES = [
    "torch", "transformers", "vllm", "verl", "flash-attn", "deepspeed", "llamafactory", "lmms-eval",
]  # fmt: skip
PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==\S+$")


def post_deploy_installs(env_file: Path) -> tuple[list[str], list[str]]:
    """The pinned requirements the env's post-deploy script installs: (with, without build isolation)."""
    script = env_file.with_suffix(".post-deploy.sh")
    isolated, unisolated = [], []
    if not script.exists():
        return isolated, unisolated
    for line in script.read_text().replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if "pip" not in words or "install" not in words:
            continue
        pins = [word for word in words[words.index("install") + 1 :] if PIN.match(word)]
        (unisolated if "--no-build-isolation" in words else isolated).extend(pins)
    return isolated, unisolated


def package_dependencies() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def resolve(pip: str, requirements: list[str], workdir: Path) -> subprocess.Popen:
    listed = workdir / "requirements.txt"
    listed.write_text("".join(f"{line}\n" for line in requirements))
    command = [
        pip, "--isolated", "install", "--dry-run", "--ignore-installed", "--quiet",
        "--report", str(workdir / "report.json"), "-r", str(listed),
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def built_requirements(torch_python: str, pin: str, workdir: Path) -> list[str]:
    """The requirements of a source package built against the torch already installed, as the
    post-deploy script builds it (metadata only: the CUDA kernels need nvcc)."""
    command = [
        torch_python, "-m", "pip", "--isolated", "install", "--dry-run", "--no-deps", "--no-build-isolation",
        "--ignore-installed", "--quiet", "--report", str(workdir / "built.json"), pin,
    ]  # fmt: skip
    env = {"FLASH_ATTENTION_SKIP_CUDA_BUILD": "TRUE", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{pin} does not build against torch:\n{result.stdout}{result.stderr}")
    [item] = json.loads((workdir / "built.json").read_text())["install"]
    return item["metadata"].get("requires_dist", [])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("env_files", nargs="*", type=Path)
    parser.add_argument("--pip", default="pip", help="pip of a Python 3.11 venv with the envs' pip")
    parser.add_argument("--torch-python", default=sys.executable, help="a Python with torch installed")
    args = parser.parse_args(argv)
    env_files = args.env_files or sorted((ROOT / "envs").glob("*.yaml"))
    scratch = Path(tempfile.mkdtemp(prefix="check-envs-"))
    started, running, builds = time.monotonic(), {}, {}
    for env_file in env_files:
        isolated, unisolated = post_deploy_installs(env_file)
        workdir = scratch / env_file.stem
        workdir.mkdir()
        running[env_file] = resolve(
            args.pip, [*pip_lines(env_file), *isolated, *package_dependencies()], workdir
        )
        builds[env_file] = unisolated
    failed = False
    for env_file, process in running.items():
        output = process.communicate()[0]
        seconds = time.monotonic() - started
        if process.returncode != 0:
            print(f"{env_file.name}: does not resolve ({seconds:.0f} s)\n{output}", flush=True)
            failed = True
            continue
        report = json.loads((scratch / env_file.stem / "report.json").read_text())
        versions = {canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in report["install"]}
        for pin in builds[env_file]:
            name, version = pin.split("==")
            for requirement in built_requirements(args.torch_python, pin, scratch / env_file.stem):
                needed = canonical(re.match(r"[A-Za-z0-9._-]+", requirement).group())
                if needed not in versions:
                    print(f"{env_file.name}: {pin} needs {requirement}, which the env does not install")
                    failed = True
            versions[canonical(name)] = f"{version} (built)"
        key = ", ".join(f"{name} {versions[name]}" for name in KEY_PACKAGES if name in versions)
        print(f"{env_file.name}: {len(versions)} packages, resolved after {seconds:.0f} s; {key}", flush=True)
    print(f"all env files: {time.monotonic() - started:.0f} s")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
