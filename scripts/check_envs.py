"""Resolve every envs/*.yaml as Snakemake + conda would install it, with pip's resolver, and fail on a
conflict or a source package that cannot build.

    python scripts/check_envs.py [envs/verl.yaml ...]

Conda channels are unreachable here, so this checks the pip side: the env file's pip list, which conda
hands to pip in one `pip install -r`, together with what the env's post-deploy script installs and the
package's own dependencies (pyproject.toml), on this machine's Linux x86_64 and Python 3.11 (the envs'
python=3.11) with the envs' pip, against PyPI alone (--isolated: no local index, wheel dir or
constraint). A package the post-deploy script builds without build isolation (flash-attn, whose build
imports torch) has its metadata built by --torch-python, an interpreter with torch, and its requirements
checked against the resolved env. Prints, per env, the time and the versions that matter.

The envs' pip gets a venv of its own in the cache directory (~/.cache/prism-check-envs). A resolution
that succeeded is kept there for a day, keyed by everything it was given, so an unchanged env file is
not resolved again by every test run on the same machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
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
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "prism-check-envs"
KEEP_SECONDS = 24 * 3600


def envs_pip(env_files: list[Path]) -> str:
    """A venv with the pip version the env files pin (`- pip=24.2`), created once."""
    versions = {m for f in env_files for m in re.findall(r"^\s*- pip=(\S+)\s*$", f.read_text(), re.MULTILINE)}
    if len(versions) != 1:
        raise SystemExit(f"the env files must pin one pip version, not {sorted(versions) or 'none'}")
    [version] = versions
    venv = CACHE / f"pip-{version}"
    if not (venv / "bin" / "pip").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "--isolated", "install", "--quiet"]
        subprocess.run([*pip, f"pip=={version}"], check=True)
    return str(venv / "bin" / "pip")


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
    parser.add_argument("--pip", help="pip of a Python 3.11 venv with the envs' pip (default: made here)")
    parser.add_argument("--torch-python", default=sys.executable, help="a Python with torch installed")
    args = parser.parse_args(argv)
    env_files = args.env_files or sorted((ROOT / "envs").glob("*.yaml"))
    CACHE.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="check-envs-"))
    started, running, builds = time.monotonic(), {}, {}
    pip = args.pip or envs_pip(env_files)
    keys, failed = {}, False
    for env_file in env_files:
        isolated, unisolated = post_deploy_installs(env_file)
        requirements = [*pip_lines(env_file), *isolated, *package_dependencies()]
        keys[env_file] = hashlib.sha256(json.dumps([pip, requirements, unisolated]).encode()).hexdigest()
        kept = CACHE / f"{keys[env_file]}.txt"
        if kept.exists() and time.time() - kept.stat().st_mtime < KEEP_SECONDS:
            print(f"{env_file.name}: {kept.read_text().strip()} (kept from a resolution today)", flush=True)
            continue
        workdir = scratch / env_file.stem
        workdir.mkdir()
        running[env_file] = resolve(pip, requirements, workdir)
        builds[env_file] = unisolated
    for env_file, process in running.items():
        output = process.communicate()[0]
        seconds = time.monotonic() - started
        if process.returncode != 0:
            print(f"{env_file.name}: does not resolve ({seconds:.0f} s)\n{output}", flush=True)
            failed = True
            continue
        report = json.loads((scratch / env_file.stem / "report.json").read_text())
        versions = {canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in report["install"]}
        missing = []
        for pin in builds[env_file]:
            name, version = pin.split("==")
            for requirement in built_requirements(args.torch_python, pin, scratch / env_file.stem):
                if canonical(re.match(r"[A-Za-z0-9._-]+", requirement).group()) not in versions:
                    missing.append(f"{pin} needs {requirement}, which the env does not install")
            versions[canonical(name)] = f"{version} (built)"
        if missing:
            print(f"{env_file.name}: " + "; ".join(missing), flush=True)
            failed = True
            continue
        key = ", ".join(f"{name} {versions[name]}" for name in KEY_PACKAGES if name in versions)
        summary = f"{len(versions)} packages, resolved after {seconds:.0f} s; {key}"
        (CACHE / f"{keys[env_file]}.txt").write_text(summary + "\n")
        print(f"{env_file.name}: {summary}", flush=True)
    print(f"all env files: {time.monotonic() - started:.0f} s")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
