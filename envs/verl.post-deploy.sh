#!/usr/bin/env bash
# Run by Snakemake in the new environment. FlashAttention-2, which verl's FSDP actor and critic load, is
# on PyPI only as a source package whose build imports torch (and wheel's bdist_wheel), so it is built
# here against the env's torch 2.11.0 (CUDA 13) without build isolation. This needs nvcc 13 on the
# deploying machine (CUDA_HOME, e.g. `module load cuda/13.0`). Only the H100's sm_90 kernels are built;
# MAX_JOBS bounds the compile's memory. Then this workflow's package, without dependencies (the env file
# pins them). PRISM_WORKFLOW_DIR is set by the Snakefile.
set -euo pipefail
python -m pip install --no-deps wheel==0.45.1
FLASH_ATTENTION_FORCE_BUILD=TRUE FLASH_ATTN_CUDA_ARCHS="${FLASH_ATTN_CUDA_ARCHS:-90}" MAX_JOBS="${MAX_JOBS:-8}" \
  python -m pip install --no-deps --no-build-isolation flash-attn==2.8.3
python -m pip install --no-deps --editable "${PRISM_WORKFLOW_DIR:?set by the Snakefile: the workflow directory}"
