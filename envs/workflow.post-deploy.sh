#!/usr/bin/env bash
# Run by Snakemake in the new environment. verl without its dependencies: the CPU engines use its
# algorithms only, and its declared dependencies pull a CUDA torch. Then this workflow's package, also
# without dependencies (the env file pins them). PRISM_WORKFLOW_DIR is set by the Snakefile.
set -euo pipefail
python -m pip install --no-deps verl==0.9.1
python -m pip install --no-deps --editable "${PRISM_WORKFLOW_DIR:?set by the Snakefile: the workflow directory}"
