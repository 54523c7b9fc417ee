rule tables:
    """The paper's main table from our benchmark JSONs, and each cell beside the published number."""
    input:
        scores=expand(
            f"{RESULTS}/eval/{{policy}}/{{variant}}/{{benchmark}}.json",
            policy=POLICIES,
            variant=CFG.eval.variants,
            benchmark=CFG.eval.benchmarks,
        ),
        paper=CFG.tables.paper_results,
        code=code("tables"),
    output:
        main=f"{RESULTS}/tables/main.csv",
        versus=f"{RESULTS}/tables/main_vs_paper.csv",
    log:
        f"{RESULTS}/logs/tables.log",
    localrule: True
    conda:
        "../envs/workflow.yaml"
    params:
        config=as_arg(
            {
                "benchmarks": CFG.eval.benchmarks,
                "variants": CFG.eval.variants,
                "policies": [p.model_dump() for p in CFG.policies],
                "paper_results": CFG.tables.paper_results,
            }
        ),
        eval_root=lambda wc, input: Path(input.scores[0]).parents[2],
    shell:
        "python -m prism.tables --config {params.config} --eval-root {params.eval_root}"
        " --out $(dirname {output.main}) > {log} 2>&1"
