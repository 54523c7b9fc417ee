#!/usr/bin/env bash
# Create .venv from envs/workflow.yaml's pins, the way Snakemake deploys that env (its pip list, then
# envs/workflow.post-deploy.sh), plus the test tools (requirements.txt). Idempotent; ~2 GB, a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import prism, verl, snakemake, snakemake_executor_plugin_slurm_jobstep, matplotlib" 2>/dev/null; then
  pins=$(mktemp)
  trap 'rm -f "$pins"' EXIT
  # CPU substitution: torchvision 0.28's operators need the CUDA build of torch 2.13 and fail to load
  # with the CPU build; tiny mode builds the image-only processor, which does not need it.
  python scripts/env_pins.py envs/workflow.yaml --drop torchvision > "$pins"
  pip install --quiet torch==2.13.0 # the CPU build; install it first so nothing pulls a CUDA build
  pip install --quiet -r "$pins" -r requirements.txt
  # scripts/test.sh sets up the environments at once: one editable install of the package at a time
  PRISM_WORKFLOW_DIR="$PWD" flock "${TMPDIR:-/tmp}/prism-editable-install.lock" bash envs/workflow.post-deploy.sh
fi
