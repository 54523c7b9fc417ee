"""The conda environments, deployed the way Snakemake deploys them. Conda channels are unreachable here, so
`conda` is a stand-in (tests/conda/bin/conda) that creates each env as an empty venv; the pip pins
themselves are resolved against PyPI by scripts/check_envs.py."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TINY, snakemake

ENVS = sorted((ROOT / "envs").glob("*.yaml"))
FAKE_CONDA = ROOT / "tests" / "conda" / "bin"


def pip_list(path: Path) -> list[str]:
    env = yaml.safe_load(path.read_text())
    return next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))


def test_every_engine_has_an_environment():
    names = {p.stem for p in ENVS}
    assert {"workflow", "discriminator", "llamafactory", "verl", "lmms-eval"} <= names
    common = (ROOT / "rules" / "common.smk").read_text()
    for name in names:
        assert f"../envs/{name}.yaml" in common


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.stem)
def test_environment_pins_every_package_and_nothing_depends_on_where_conda_runs_pip(path: Path):
    """Conda runs the pip list from the env file's copy in the conda prefix (.snakemake/conda/<hash>.yaml
    or --conda-prefix), so a relative path there names the wrong directory; the package and the steps a
    pip list cannot say are in the env's post-deploy script."""
    env = yaml.safe_load(path.read_text())
    assert env["name"].startswith("prism-")
    assert "python=3.11" in env["dependencies"]
    for requirement in pip_list(path):
        assert "==" in requirement and not requirement.startswith("-"), f"{path.name}: {requirement}"
    post_deploy = path.with_suffix(".post-deploy.sh").read_text()
    assert 'pip install --no-deps --editable "${PRISM_WORKFLOW_DIR:?' in post_deploy


def test_requirements_add_to_the_workflow_env_and_repeat_none_of_its_pins():
    """.venv is built from envs/workflow.yaml's own pins (scripts/setup.sh): a second list would drift."""
    workflow = {line.split("==")[0].lower() for line in pip_list(ROOT / "envs" / "workflow.yaml")}
    requirements = [
        line.split("==")[0].lower()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert requirements and not workflow & set(requirements)


def test_workflow_env_deploys_as_snakemake_deploys_it_and_every_process_imports_the_package(
    workflow_copy, tmp_path
):
    """Snakemake's own deployment (copy to a custom conda prefix, `conda env create`, the post-deploy
    script), run from another directory; then the package and verl import in that env from anywhere,
    also in a process that inherits neither a PYTHONPATH nor a working directory, as Ray's and torchrun's
    workers do not."""
    shutil.copy(ROOT / "pyproject.toml", workflow_copy)  # a checkout: the package the envs install
    prefix = tmp_path / "conda-envs"
    result = snakemake(
        workflow_copy,
        "tiny/results/tables/main.csv",
        *TINY,
        "--sdm",
        "conda",
        "--conda-prefix",
        str(prefix),
        "--conda-create-envs-only",
        env={"PATH": f"{FAKE_CONDA}{os.pathsep}{os.environ['PATH']}"},
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Running post-deploy script" in result.stderr
    [env] = [path for path in prefix.iterdir() if path.is_dir()]
    assert (env.parent / f"{env.name}.yaml").read_text() == (ROOT / "envs" / "workflow.yaml").read_text()
    probe = "import importlib.util as u, prism; print(prism.__file__); print(u.find_spec('verl').origin)"
    imported = subprocess.run(
        ["env", "-i", str(env / "bin" / "python"), "-c", probe],
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert imported == [str(workflow_copy / "prism" / "__init__.py"), imported[1]]
    assert imported[1].startswith(str(env)), "verl must be installed in the env itself"
