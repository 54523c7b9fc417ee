#!/usr/bin/env bash
# Set up, then run the linters and the test suite (the tiny pipeline end to end included).
set -euo pipefail
cd "$(dirname "$0")/.."
# The set-up steps run at once: pip spends much of its time on downloads and unpacking, not the CPU.
#   workflow       .venv, which runs the tests
#   lmms-eval      lmms-eval's own environment, for the tests that run it
#   llamafactory   LLaMA-Factory's, for the test that trains with it
#   discriminator  the warmup's, for the test that runs it under DeepSpeed ZeRO-2; then every envs/*.yaml
#                  resolved as Snakemake + conda would, flash-attn's build run against its torch
declare -A steps=(
  [workflow]="bash scripts/setup.sh"
  [lmms-eval]="bash scripts/setup-lmms-eval.sh"
  [llamafactory]="bash scripts/setup-llamafactory.sh"
  [discriminator]="bash scripts/setup-discriminator.sh && python3 scripts/check_envs.py --torch-python .venv-discriminator/bin/python"
)
logs=$(mktemp -d)
declare -A pids
for step in "${!steps[@]}"; do
  (
    SECONDS=0
    status=0
    bash -c "${steps[$step]}" >"$logs/$step.log" 2>&1 || status=$?
    echo "set-up step '$step': $SECONDS s" >>"$logs/$step.log"
    exit $status
  ) &
  pids[$step]=$!
done
failed=0
for step in "${!pids[@]}"; do
  if wait "${pids[$step]}"; then
    grep -E "^set-up step|^[a-z-]+\.yaml: |^all env files" "$logs/$step.log" # its time; the envs resolved
  else
    echo "set-up step '$step' failed (${steps[$step]}):" >&2
    tail -40 "$logs/$step.log" >&2
    failed=1
  fi
done
[ "$failed" = 0 ]
. .venv/bin/activate
ruff check prism tests benchmarks
ruff format --check prism tests benchmarks
snakefmt --check Snakefile rules
snakemake --lint
pytest -q --durations=25 "$@" # the slowest tests, to keep CI time in view
