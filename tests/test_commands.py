"""The commands the README and config/released.yaml give for the paper, run as written with --dry-run
added (they need GPUs past that). The Slurm forms deploy software, so `conda` must answer: the stand-in
in tests/conda/bin does, as it would on a cluster's login node."""

import os
import re
import shlex

import pytest

from conftest import ROOT, snakemake

FAKE_CONDA = ROOT / "tests" / "conda" / "bin"
ENV_FILES = ("workflow", "llamafactory", "discriminator", "verl", "lmms-eval")


def readme_commands() -> list[str]:
    section = (ROOT / "README.md").read_text().split("## Planning and running the paper on Slurm")[1]
    block = section.split("```bash\n")[1].split("```")[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.startswith("snakemake ")]
    prose = re.findall(r"`(snakemake [^`]+)`", section.split("```")[2].split("\n## ")[0])
    return commands + prose


def released_command() -> str:
    header = (ROOT / "config" / "released.yaml").read_text()
    return re.search(r"^# Overlaid on config/config.yaml:\s+(snakemake .+)$", header, re.MULTILINE).group(1)


COMMANDS = [*readme_commands(), released_command()]


def test_the_documented_forms_are_all_here():
    assert "snakemake results/tables/main.csv --workflow-profile profiles/slurm" in COMMANDS
    assert "snakemake results/tables/main.csv --executor slurm --sdm conda" in COMMANDS
    assert "snakemake results/tables/main.csv --configfile config/released.yaml" in COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_documented_command_plans_the_paper(command, workflow_copy):
    args = shlex.split(command)[1:]
    result = snakemake(
        workflow_copy, *args, "--dry-run", env={"PATH": f"{FAKE_CONDA}{os.pathsep}{os.environ['PATH']}"}
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "tables" in result.stdout and "Traceback" not in result.stderr
    if "slurm" in args:
        for name in ENV_FILES:
            assert f"Conda environment envs/{name}.yaml will be created." in result.stdout + result.stderr
