rule align:
    """Stage 2: PRISM alignment of the SFT policy against the warmed discriminator."""
    input:
        model=lambda wc: sft_checkpoint(wc.policy),
        disc=discriminator_checkpoint(),
        data=f"{RESULTS}/data/align/{MANIFEST}",
    output:
        manifest=f"{RESULTS}/models/prism/{{policy}}/{MANIFEST}",
    log:
        f"{RESULTS}/logs/align/{{policy}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/align/{{policy}}.tsv"
    priority: PRIORITY["align"]
    conda:
        env(CFG.align.engine)
    threads: CFG.align.resources.cpus_per_task
    resources:
        **gpu_resources(CFG.align.resources),
    params:
        config=as_arg(CFG.align.stage_slice()),
        launcher=not_compared(ray_launcher(CFG.align)),
        allocation=not_compared(allocation(CFG.align.resources)),
        work=lambda wc: work_dir("align", wc.policy),
        tracking=tracking_arg(),
        code=code("align", CFG.align.engine),
    shell:
        "{params.launcher} python -m prism.align --config {params.config} --model $(dirname {input.model})"
        " --disc $(dirname {input.disc}) --data $(dirname {input.data})"
        " --out $(dirname {output.manifest}) --work {params.work} --threads {threads}"
        " {params.allocation} --tracking {params.tracking} > {log} 2>&1"
