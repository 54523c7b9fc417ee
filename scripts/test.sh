#!/usr/bin/env bash
# Set up, then run the linters and the test suite (the tiny pipeline end to end included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup-lmms-eval.sh # lmms-eval's own environment, for the tests that run it
bash scripts/setup-llamafactory.sh # LLaMA-Factory's, for the test that trains with it
bash scripts/setup-discriminator.sh # the warmup's, for the test that runs it under DeepSpeed ZeRO-2
. .venv/bin/activate
ruff check prism tests benchmarks
ruff format --check prism tests benchmarks
snakefmt --check Snakefile rules
snakemake --lint
python scripts/check_envs.py # every envs/*.yaml resolves as Snakemake + conda would install it
pytest -q --durations=25 "$@" # the slowest tests, to keep CI time in view
