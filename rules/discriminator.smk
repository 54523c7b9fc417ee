rule upcycle:
    """Sparse-upcycle the dense discriminator base into a top-k MoE."""
    input:
        model=base_model(CFG.discriminator.model),
    output:
        manifest=f"{RESULTS}/models/discriminator/upcycled/{MANIFEST}",
    log:
        f"{RESULTS}/logs/discriminator/upcycle.log",
    benchmark:
        f"{RESULTS}/benchmarks/discriminator/upcycle.tsv"
    priority: PRIORITY["discriminator"]
    conda:
        "../envs/workflow.yaml"
    threads: CFG.discriminator.upcycle.resources.cpus_per_task
    resources:
        **gpu_resources(CFG.discriminator.upcycle.resources),
    params:
        config=as_arg(
            {"upcycle": CFG.discriminator.upcycle.model_dump(exclude={"resources"})}
        ),
        work=work_dir("discriminator", "upcycle"),
        code=code("discriminator"),
    shell:
        "python -m prism.discriminator upcycle --config {params.config} --model $(dirname {input.model})"
        " --out $(dirname {output.manifest}) --work {params.work} --threads {threads} > {log} 2>&1"


rule warmup_discriminator:
    """Pairwise Bradley-Terry warmup of the MoE discriminator with its value head."""
    input:
        model=f"{RESULTS}/models/discriminator/upcycled/{MANIFEST}",
        data=f"{RESULTS}/data/warmup/{MANIFEST}",
    output:
        manifest=f"{RESULTS}/models/discriminator/warm/{MANIFEST}",
    log:
        f"{RESULTS}/logs/discriminator/warmup.log",
    benchmark:
        f"{RESULTS}/benchmarks/discriminator/warmup.tsv"
    priority: PRIORITY["discriminator"]
    conda:
        env(CFG.discriminator.warmup.engine)
    threads: CFG.discriminator.warmup.resources.cpus_per_task
    resources:
        **gpu_resources(CFG.discriminator.warmup.resources),
    params:
        config=warmup_config("moe"),
        work=work_dir("discriminator", "warmup"),
        launcher=not_compared(warmup_launcher()),
        tracking=tracking_arg(),
        code=code("discriminator"),
    shell:
        "{params.launcher} -m prism.discriminator warmup --config {params.config}"
        " --model $(dirname {input.model})"
        " --data $(dirname {input.data}) --out $(dirname {output.manifest})"
        " --work {params.work} --threads {threads} --tracking {params.tracking} > {log} 2>&1"
