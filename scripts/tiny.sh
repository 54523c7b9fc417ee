#!/usr/bin/env bash
# Set up, then run the whole PRISM DAG in tiny mode on the CPU (a few minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
snakemake --workflow-profile profiles/local --configfile config/tiny.yaml "$@"
echo
cat tiny/results/tables/main.csv
