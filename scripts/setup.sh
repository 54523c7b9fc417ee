#!/usr/bin/env bash
# Create .venv with the pinned workflow + tiny-mode environment (idempotent; ~2 GB, a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import prism, verl, snakemake" 2>/dev/null; then
  pip install --quiet --upgrade pip
  pip install --quiet torch==2.13.0  # the CPU build; install it first so nothing pulls a CUDA build
  pip install --quiet -r requirements.txt
  pip install --quiet --no-deps verl==0.9.1
  pip install --quiet --no-deps -e .
fi
