#!/usr/bin/env bash
# Create .venv-lmms-eval: lmms-eval 0.7.3 on the CPU torch, with prism importable, for the tests that run
# lmms-eval itself (its pins clash with the workflow's, as on the cluster: envs/lmms-eval.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-lmms-eval/bin/python ]; then
  python3 -m venv .venv-lmms-eval
fi
if ! .venv-lmms-eval/bin/python -c "import lmms_eval, prism" 2>/dev/null; then
  pip=".venv-lmms-eval/bin/pip"
  $pip install --quiet --upgrade pip
  pinned="-c scripts/lmms-eval-constraints.txt" # the whole tested environment
  $pip install --quiet $pinned torch==2.13.0 # the CPU build, first, so nothing pulls a CUDA one
  $pip install --quiet $pinned lmms-eval==0.7.3 math-verify==0.9.0 Levenshtein==0.27.5 torch==2.13.0
  # pip finds a CUDA torchvision beside torch; its import fails on CPU and lmms-eval runs without it
  $pip uninstall --quiet -y torchvision
  $pip install --quiet --no-deps -e .
fi
