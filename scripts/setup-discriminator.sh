#!/usr/bin/env bash
# Create .venv-discriminator: envs/discriminator.yaml's own pins on the CPU torch, with prism importable,
# for the tests that run the warmup under `accelerate launch` with DeepSpeed ZeRO-2. CPU substitutions, and
# nothing else: torch 2.13.0 (the CPU build) for 2.11.0; no torchvision (its PyPI builds are CUDA builds
# whose import fails here; the tiny processor needs none); deepspeed built for DeepSpeed's CPU accelerator
# without its compiled ops, against the torch already installed (its sdist's setup imports torch).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-discriminator
if [ ! -x $venv/bin/python ]; then
  python3 -m venv $venv
fi
if ! $venv/bin/python -c "import accelerate, deepspeed, transformers, prism" 2>/dev/null; then
  pip="$venv/bin/pip"
  $pip install --quiet --upgrade pip
  $pip install --quiet torch==2.13.0 # first, so nothing pulls a CUDA one
  python3 scripts/env_pins.py envs/discriminator.yaml --drop torch --drop torchvision --drop deepspeed \
    --set torch==2.13.0 >$venv/requirements.txt
  $pip install --quiet -r $venv/requirements.txt
  deepspeed=$(python3 scripts/env_pins.py envs/discriminator.yaml | grep '^deepspeed')
  DS_ACCELERATOR=cpu DS_BUILD_OPS=0 $pip install --quiet --no-build-isolation "$deepspeed" torch==2.13.0
  # scripts/test.sh sets up the environments at once: one editable install of the package at a time
  flock "${TMPDIR:-/tmp}/prism-editable-install.lock" $pip install --quiet --no-deps -e .
fi
