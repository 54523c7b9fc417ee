"""The conda environments cannot be built here (no conda channels): check their syntax and pins."""

from pathlib import Path

import pytest
import yaml

from conftest import ROOT

ENVS = sorted((ROOT / "envs").glob("*.yaml"))


def test_every_engine_has_an_environment():
    names = {p.stem for p in ENVS}
    assert {"workflow", "discriminator", "llamafactory", "verl", "lmms-eval"} <= names
    common = (ROOT / "rules" / "common.smk").read_text()
    for name in names:
        assert f"../envs/{name}.yaml" in common


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.stem)
def test_environment_is_valid_yaml_with_every_package_pinned(path: Path):
    env = yaml.safe_load(path.read_text())
    assert env["name"].startswith("prism-")
    deps = env["dependencies"]
    assert "python=3.11" in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    for requirement in pip:
        assert requirement == "-e .." or "==" in requirement, f"{path.name}: {requirement} is not pinned"


def test_workflow_environment_matches_the_tested_requirements():
    env = yaml.safe_load((ROOT / "envs" / "workflow.yaml").read_text())
    pip = {
        r.split("==")[0].lower(): r
        for r in next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    }
    requirements = {
        line.split("==")[0].lower(): line
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if "==" in line
    }
    for name, pinned in pip.items():
        if name in requirements:
            assert pinned == requirements[name]
