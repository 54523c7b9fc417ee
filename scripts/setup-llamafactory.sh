#!/usr/bin/env bash
# Create .venv-llamafactory: envs/llamafactory.yaml's own pins on the CPU torch, with prism importable, for
# the tests that run `llamafactory-cli train` itself (its transformers/accelerate caps clash with the
# workflow's, as on the cluster). CPU substitutions, and nothing else: torch 2.13.0 (the CPU build) for
# 2.11.0; no torchvision (its PyPI builds are CUDA builds whose import fails here; the tiny processor needs
# none); torchaudio at the env file's pin without its compiled CUDA libraries (LLaMA-Factory imports it,
# uses none of it for images, and it then imports without them); deepspeed built without its CUDA ops,
# against the torch already installed (its sdist's setup imports torch).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-llamafactory
if [ ! -x $venv/bin/python ]; then
  python3 -m venv $venv
fi
if ! $venv/bin/python -c "import llamafactory.data, deepspeed, prism" 2>/dev/null; then
  pip="$venv/bin/pip"
  $pip install --quiet --upgrade pip
  $pip install --quiet torch==2.13.0 # first, so nothing pulls a CUDA one
  python3 scripts/env_pins.py envs/llamafactory.yaml --drop torch --drop torchvision --drop torchaudio \
    --drop deepspeed --set torch==2.13.0 >$venv/requirements.txt
  $pip install --quiet -r $venv/requirements.txt
  # a dependency pulls PyPI's torchvision beside torch: a CUDA build whose import fails on CPU (nms)
  $pip uninstall --quiet -y torchvision
  deepspeed=$(python3 scripts/env_pins.py envs/llamafactory.yaml | grep '^deepspeed')
  DS_BUILD_OPS=0 $pip install --quiet --no-build-isolation "$deepspeed" torch==2.13.0
  torchaudio=$(python3 scripts/env_pins.py envs/llamafactory.yaml | grep '^torchaudio')
  $pip install --quiet --no-deps "$torchaudio"
  rm -f $venv/lib/python3.11/site-packages/torchaudio/lib/*.so
  # scripts/test.sh sets up the environments at once: one editable install of the package at a time
  flock "${TMPDIR:-/tmp}/prism-editable-install.lock" $pip install --quiet --no-deps -e .
fi
