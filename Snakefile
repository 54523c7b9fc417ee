# PRISM multimodal post-training (arXiv 2604.28123): SFT -> MoE discriminator -> PRISM alignment ->
# RLVR (GRPO/DAPO/GSPO) -> benchmarks -> the paper's tables. Tiny CPU mode: --configfile config/tiny.yaml


import os

from snakemake.utils import min_version

# Profiles are read from profiles/<name>/profile.yaml from 9.19 on; older versions would ignore them.
min_version("9.19")

# Where each conda env's post-deploy script (envs/*.post-deploy.sh) installs this package from.
os.environ.update(PRISM_WORKFLOW_DIR=workflow.basedir)


configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"


wildcard_constraints:
    policy="|".join(POLICIES),
    model="[^/]+",
    dataset="sft|warmup|align|rl",
    init="sft|prism",
    algo="grpo|dapo|gspo",
    variant="|".join(CFG.evaluated_variants()),
    ablation="|".join(TRAINED_ABLATIONS),
    slug="[^/]+",


include: "rules/data.smk"
include: "rules/sft.smk"
include: "rules/discriminator.smk"
include: "rules/align.smk"
include: "rules/rl.smk"
include: "rules/eval.smk"
include: "rules/tables.smk"


if ablation_rows():

    include: "rules/ablations.smk"


rule all:
    default_target: True
    input:
        f"{RESULTS}/tables/main.csv",
        f"{RESULTS}/tables/main_vs_paper.csv",
