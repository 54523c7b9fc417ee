rule evaluate:
    """All configured benchmarks for one model variant (one model load, one judge server per job)."""
    input:
        model=variant_checkpoint,
        data=benchmark_data,
        code=code("eval", "data"),
    output:
        scores=expand(
            f"{RESULTS}/eval/{{{{policy}}}}/{{{{variant}}}}/{{benchmark}}.json",
            benchmark=CFG.eval.benchmarks,
        ),
        manifest=f"{RESULTS}/eval/{{policy}}/{{variant}}/{MANIFEST}",
    log:
        f"{RESULTS}/logs/eval/{{policy}}/{{variant}}.log",
    conda:
        env(CFG.eval.engine)
    threads: CFG.eval.resources.cpus_per_task
    resources:
        **gpu_resources(CFG.eval.resources),
    params:
        config=as_arg(
            CFG.eval.model_dump(exclude={"resources", "variants", "synthetic"})
        ),
        data=lambda wc, input: bench_dir(input.data),
        work=lambda wc: work_dir("eval", wc.policy, wc.variant),
    shell:
        "python -m prism.eval --config {params.config} --model $(dirname {input.model})"
        " --data {params.data} --out $(dirname {output.manifest})"
        " --work {params.work} --threads {threads} > {log} 2>&1"
