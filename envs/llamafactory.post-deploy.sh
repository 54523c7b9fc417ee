#!/usr/bin/env bash
# Run by Snakemake in the new environment: this workflow's package, without its dependencies (the env
# file pins them). PRISM_WORKFLOW_DIR is set by the Snakefile.
set -euo pipefail
python -m pip install --no-deps --editable "${PRISM_WORKFLOW_DIR:?set by the Snakefile: the workflow directory}"
