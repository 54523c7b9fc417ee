rule fetch_model:
    """A base model: downloaded from the Hugging Face Hub, or built tiny and random offline."""
    output:
        manifest=f"{INPUTS}/models/{{model}}/{MANIFEST}",
    log:
        f"{RESULTS}/logs/data/model-{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/data/model-{{model}}.tsv"
    priority: input_priority
    localrule: True
    conda:
        "../envs/workflow.yaml"
    params:
        spec=lambda wc: as_arg(CFG.models[wc.model].selected()),
        code=lambda wc: built_code(CFG.models[wc.model].selected()),
    shell:
        "python -m prism.data model --name {wildcards.model} --config {params.spec}"
        " --out $(dirname {output.manifest}) > {log} 2>&1"


rule fetch_dataset:
    """A training set as its authors released it: downloaded, or synthetic shapes in tiny mode."""
    output:
        manifest=f"{INPUTS}/datasets/{{dataset}}/{MANIFEST}",
    log:
        f"{RESULTS}/logs/data/dataset-{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/data/dataset-{{dataset}}.tsv"
    priority: input_priority
    localrule: True
    conda:
        "../envs/workflow.yaml"
    params:
        spec=lambda wc: as_arg(getattr(CFG.data, wc.dataset).selected()),
        code=lambda wc: built_code(getattr(CFG.data, wc.dataset).selected()),
    shell:
        "python -m prism.data dataset --name {wildcards.dataset} --config {params.spec}"
        " --out $(dirname {output.manifest}) > {log} 2>&1"


rule prepare_dataset:
    """A fetched set checked row by row and written as its stage reads it; rejected rows are counted by reason."""
    input:
        raw=f"{INPUTS}/datasets/{{dataset}}/{MANIFEST}",
        tokenizers=lambda wc: tokenizer_manifests(prepare_spec(wc.dataset)),
    output:
        manifest=f"{RESULTS}/data/{{dataset}}/{MANIFEST}",
    log:
        f"{RESULTS}/logs/data/prepare-{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/data/prepare-{{dataset}}.tsv"
    priority: input_priority
    conda:
        "../envs/workflow.yaml"
    threads: CFG.data.resources.cpus_per_task
    resources:
        **cpu_resources(CFG.data.resources),
    params:
        spec=lambda wc: as_arg(prepare_spec(wc.dataset)),
        settings=not_compared(
            as_arg({"max_rejected_fraction": CFG.data.max_rejected_fraction})
        ),
        code=code("data"),
    shell:
        "python -m prism.data prepare --name {wildcards.dataset} --config {params.spec}"
        " --settings {params.settings} --raw $(dirname {input.raw}) --out $(dirname {output.manifest}) > {log} 2>&1"


rule make_benchmarks:
    """Held-out synthetic benchmark sets for the CPU evaluator (lmms-eval brings its own data)."""
    output:
        manifest=f"{RESULTS}/data/bench/{MANIFEST}",
    log:
        f"{RESULTS}/logs/data/benchmarks.log",
    benchmark:
        f"{RESULTS}/benchmarks/data/benchmarks.tsv"
    priority: PRIORITY["benchmarks"]
    localrule: True
    conda:
        "../envs/workflow.yaml"
    params:
        spec=(
            as_arg(
                {"source": "synthetic", "synthetic": CFG.eval.synthetic.model_dump()}
            )
            if CFG.eval.synthetic
            else ""
        ),
        code=code("data"),
    shell:
        "python -m prism.data benchmarks --name bench --config {params.spec}"
        " --out $(dirname {output.manifest}) > {log} 2>&1"


rule fetch_released:
    """One of the authors' released checkpoints, used in place of building that stage."""
    output:
        manifest=f"{INPUTS}/released/{{slug}}/{MANIFEST}",
    log:
        f"{RESULTS}/logs/data/released-{{slug}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/data/released-{{slug}}.tsv"
    localrule: True
    conda:
        "../envs/workflow.yaml"
    params:
        spec=lambda wc: as_arg({"source": "hf", "hf": {"repo": RELEASED[wc.slug]}}),
        expect=lambda wc: (
            "discriminator"
            if RELEASED[wc.slug] == CFG.discriminator.released
            else "policy"
        ),
    shell:
        "python -m prism.data model --name {wildcards.slug} --config {params.spec}"
        " --expect {params.expect} --out $(dirname {output.manifest}) > {log} 2>&1"
