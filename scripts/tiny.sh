#!/usr/bin/env bash
# Set up, then build the main table in tiny mode on the CPU and print it.
# Other targets, such as the ablation table: bash scripts/tiny.sh tiny/results/tables/ablations.csv
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# The arguments go first: --configfile takes every word after it.
snakemake "$@" --workflow-profile profiles/local --configfile config/tiny.yaml
tables=()
for target in "$@"; do
    [[ $target == *.csv && -f $target ]] && tables+=("$target")
done
for table in "${tables[@]:-tiny/results/tables/main.csv}"; do
    echo
    echo "$table"
    cat "$table"
done
