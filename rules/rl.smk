rule rl:
    """Stage 3: RLVR of one initialisation (SFT or PRISM) with one algorithm."""
    input:
        model=lambda wc: init_checkpoint(wc.policy, wc.init),
        data=f"{RESULTS}/data/rl/{MANIFEST}",
    output:
        manifest=f"{RESULTS}/models/rl/{{policy}}/{{init}}-{{algo}}/{MANIFEST}",
    log:
        f"{RESULTS}/logs/rl/{{policy}}/{{init}}-{{algo}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/rl/{{policy}}/{{init}}-{{algo}}.tsv"
    priority: PRIORITY["rl"]
    conda:
        env(CFG.rl.engine)
    threads: CFG.rl.resources.cpus_per_task
    resources:
        **gpu_resources(CFG.rl.resources),
    params:
        config=lambda wc: rl_slice(wc.algo),
        launcher=not_compared(ray_launcher(CFG.rl)),
        allocation=not_compared(allocation(CFG.rl.resources)),
        work=lambda wc: work_dir("rl", wc.policy, f"{wc.init}-{wc.algo}"),
        tracking=tracking_arg(),
        code=code("rl", CFG.rl.engine),
    shell:
        "{params.launcher} python -m prism.rl --config {params.config} --model $(dirname {input.model})"
        " --data $(dirname {input.data}) --out $(dirname {output.manifest})"
        " --work {params.work} --threads {threads} {params.allocation} --tracking {params.tracking}"
        " > {log} 2>&1"
