rule fetch_benchmarks:
    """The benchmarks' data sets, downloaded once by lmms-eval's own tasks into a cache the evaluation jobs
    read offline."""
    output:
        manifest=BENCHMARK_CACHE,
    log:
        f"{RESULTS}/logs/eval/fetch-benchmarks.log",
    benchmark:
        f"{RESULTS}/benchmarks/eval/fetch-benchmarks.tsv"
    localrule: True
    conda:
        env("lmms_eval")
    params:
        tasks=as_arg(
            {
                benchmark: CFG.eval.scoring[benchmark].tasks
                for benchmark in CFG.eval.benchmarks
            }
        ),
    shell:
        "python -m prism.eval.fetch --config {params.tasks}"
        " --out $(dirname {output.manifest}) > {log} 2>&1"


if CFG.eval.engine == "lmms_eval":

    rule evaluate_benchmark:
        """One benchmark for one model variant: the model loaded once, the judge served beside it where the
        benchmark's scoring uses one. Its slice holds only this benchmark's scoring, so a change to another
        benchmark reruns nothing here."""
        input:
            unpack(evaluation_inputs),
        output:
            score=f"{RESULTS}/eval/{{policy}}/{{variant}}/benchmarks/{{benchmark}}/{{benchmark}}.json",
            manifest=f"{RESULTS}/eval/{{policy}}/{{variant}}/benchmarks/{{benchmark}}/{MANIFEST}",
        log:
            f"{RESULTS}/logs/eval/{{policy}}/{{variant}}/{{benchmark}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/eval/{{policy}}/{{variant}}/{{benchmark}}.tsv"
        priority: PRIORITY["evaluate"]
        conda:
            env("lmms_eval")
        threads: CFG.eval.resources.cpus_per_task
        resources:
            **(
                gpu_resources(CFG.eval.resources)
                | {
                    "runtime": lambda wc: round(
                        CFG.eval.benchmark_resources(wc.benchmark).hours * 60
                    )
                }
            ),
        params:
            config=lambda wc: as_arg(CFG.eval.stage_slice([wc.benchmark])),
            inputs=lambda wc, input: " ".join(
                f"--{name} {Path(input[name]).parent}"
                for name in ("judge", "benchmarks")
                if name in input.keys()
            ),
            allocation=not_compared(allocation(CFG.eval.resources)),
            work=lambda wc: work_dir("eval", wc.policy, wc.variant, wc.benchmark),
            code=code("eval", CFG.eval.engine),
        shell:
            "python -m prism.eval --config {params.config} --model $(dirname {input.model})"
            " {params.inputs} --out $(dirname {output.manifest})"
            " --work {params.work} --threads {threads} {params.allocation} > {log} 2>&1"

    rule evaluate:
        """One model variant's benchmark records side by side, where the tables read them."""
        input:
            expand(
                f"{RESULTS}/eval/{{{{policy}}}}/{{{{variant}}}}/benchmarks/{{benchmark}}/{MANIFEST}",
                benchmark=CFG.eval.benchmarks,
            ),
        output:
            scores=expand(
                f"{RESULTS}/eval/{{{{policy}}}}/{{{{variant}}}}/{{benchmark}}.json",
                benchmark=CFG.eval.benchmarks,
            ),
            manifest=f"{RESULTS}/eval/{{policy}}/{{variant}}/{MANIFEST}",
        log:
            f"{RESULTS}/logs/eval/{{policy}}/{{variant}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/eval/{{policy}}/{{variant}}.tsv"
        localrule: True
        conda:
            "../envs/workflow.yaml"
        params:
            benchmarks=lambda wc, input: " ".join(str(Path(m).parent) for m in input),
            code=code("eval.collect"),
        shell:
            "python -m prism.eval.collect --benchmarks {params.benchmarks}"
            " --out $(dirname {output.manifest}) > {log} 2>&1"

else:

    rule evaluate:
        """All configured benchmarks for one model variant, in one job (the CPU engine's synthetic sets)."""
        input:
            unpack(evaluation_inputs),
        output:
            scores=expand(
                f"{RESULTS}/eval/{{{{policy}}}}/{{{{variant}}}}/{{benchmark}}.json",
                benchmark=CFG.eval.benchmarks,
            ),
            manifest=f"{RESULTS}/eval/{{policy}}/{{variant}}/{MANIFEST}",
        log:
            f"{RESULTS}/logs/eval/{{policy}}/{{variant}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/eval/{{policy}}/{{variant}}.tsv"
        priority: PRIORITY["evaluate"]
        conda:
            env(CFG.eval.engine)
        threads: CFG.eval.resources.cpus_per_task
        resources:
            **gpu_resources(CFG.eval.resources),
        params:
            config=as_arg(CFG.eval.stage_slice()),
            inputs=lambda wc, input: " ".join(
                f"--{name} {Path(input[name]).parent}"
                for name in ("data", "judge", "benchmarks")
                if name in input.keys()
            ),
            allocation=not_compared(allocation(CFG.eval.resources)),
            work=lambda wc: work_dir("eval", wc.policy, wc.variant),
            code=code("eval", CFG.eval.engine),
        shell:
            "python -m prism.eval --config {params.config} --model $(dirname {input.model})"
            " {params.inputs} --out $(dirname {output.manifest})"
            " --work {params.work} --threads {threads} {params.allocation} > {log} 2>&1"
