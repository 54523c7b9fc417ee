"""Secrets stay in the environment: a dry run of the paper config with HF_TOKEN and WANDB_API_KEY set
(to markers) shows them in no command line and leaves them in no file; preflight never prints the token.
The live-curve settings rendered for every engine, W&B included, hold no key either (the event files and
W&B's offline runs: test_tracking.py, and the tiny run's work directory: test_pipeline.py)."""

import json

from conftest import SECRETS, files_holding_secrets, snakemake, write_config
from prism.core.tracking import (
    accelerate_init_kwargs,
    accelerate_settings,
    job_tracking,
    llamafactory_environment,
    llamafactory_settings,
    verl_environment,
)


def test_paper_dry_run_shows_no_secret_in_commands_or_files(workflow_copy):
    """With W&B on beside TensorBoard, so every training job's `--tracking` is among the commands."""
    overlay = write_config(workflow_copy, "wandb.yaml", {"tracking": {"backends": ["tensorboard", "wandb"]}})
    result = snakemake(
        workflow_copy,
        "-n",
        "--printshellcmds",
        "results/tables/main.csv",
        "--configfile",  # last: it takes every value after it
        overlay,
        env=SECRETS,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "python -m prism.rl" in result.stdout  # the commands were printed, and hold no secret
    assert not [value for value in SECRETS.values() if value in result.stdout + result.stderr]
    tracked = [line for line in result.stdout.splitlines() if "--tracking" in line]
    for module in ("prism.sft", "prism.discriminator warmup", "prism.align", "prism.rl"):
        assert [line for line in tracked if f"-m {module} " in line], module
    assert all('"wandb"' in line for line in tracked)
    written = [workflow_copy / name for name in ("results", "logs", "work", ".snakemake")]
    assert files_holding_secrets(*[path for path in written if path.exists()]) == []


def test_no_engines_tracking_settings_carry_a_key(tmp_path, monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    spec = {"backends": ["tensorboard", "wandb"], "wandb": {"entity": "lab", "mode": "offline"}}
    tracking = job_tracking(spec, tmp_path / "work", "rl-x")
    rendered = json.dumps(
        [
            verl_environment(tracking),
            llamafactory_settings(tracking),
            llamafactory_environment(tracking),
            accelerate_settings(tracking),
            accelerate_init_kwargs(tracking, {"lr": 1e-6}),
        ]
    )
    assert not [value for value in SECRETS.values() if value in rendered]
    assert "KEY" not in rendered and "TOKEN" not in rendered
