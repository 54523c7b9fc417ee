rule sft:
    """Stage 1: supervised fine-tuning of a policy on the teacher demonstrations."""
    input:
        model=lambda wc: base_model(CFG.policy(wc.policy).model),
        data=f"{RESULTS}/data/sft/{MANIFEST}",
    output:
        manifest=f"{RESULTS}/models/sft/{{policy}}/{MANIFEST}",
    log:
        f"{RESULTS}/logs/sft/{{policy}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/sft/{{policy}}.tsv"
    priority: PRIORITY["sft"]
    conda:
        env(CFG.sft.engine)
    threads: CFG.sft.resources.cpus_per_task
    resources:
        **gpu_resources(CFG.sft.resources),
    params:
        config=as_arg(CFG.sft.stage_slice()),
        allocation=not_compared(allocation(CFG.sft.resources)),
        work=lambda wc: work_dir("sft", wc.policy),
        tracking=tracking_arg(),
        code=code("sft", CFG.sft.engine),
    shell:
        "python -m prism.sft --config {params.config} --model $(dirname {input.model})"
        " --data $(dirname {input.data}) --out $(dirname {output.manifest})"
        " --work {params.work} --threads {threads} {params.allocation} --tracking {params.tracking}"
        " > {log} 2>&1"
