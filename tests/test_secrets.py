"""Secrets stay in the environment: a dry run of the paper config with HF_TOKEN and WANDB_API_KEY set
(to markers) shows them in no command line and leaves them in no file; preflight never prints the token."""

from conftest import SECRETS, files_holding_secrets, snakemake


def test_paper_dry_run_shows_no_secret_in_commands_or_files(workflow_copy):
    result = snakemake(workflow_copy, "-n", "--printshellcmds", "results/tables/main.csv", env=SECRETS)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "python -m prism.rl" in result.stdout  # the commands were printed, and hold no secret
    assert not [value for value in SECRETS.values() if value in result.stdout + result.stderr]
    written = [workflow_copy / name for name in ("results", "logs", "work", ".snakemake")]
    assert files_holding_secrets(*[path for path in written if path.exists()]) == []
