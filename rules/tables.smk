rule tables:
    """The paper's main table from our benchmark JSONs, each cell beside the published number, and the
    report's charts: ours vs. the paper, and every trained stage's curves."""
    input:
        scores=expand(
            f"{RESULTS}/eval/{{policy}}/{{variant}}/{{benchmark}}.json",
            policy=POLICIES,
            variant=CFG.eval.variants,
            benchmark=CFG.eval.benchmarks,
        ),
        runs=trained_runs(),
        paper=CFG.tables.paper_results,
    output:
        main=report(
            f"{RESULTS}/tables/main.csv",
            caption="../report/main.rst",
            category="Tables",
        ),
        versus=report(
            f"{RESULTS}/tables/main_vs_paper.csv",
            caption="../report/versus.rst",
            category="Tables",
        ),
        intervals=report(
            f"{RESULTS}/tables/main_ci.csv",
            caption="../report/intervals.rst",
            category="Tables",
        ),
        perception=report(
            f"{RESULTS}/tables/perception.csv",
            caption="../report/perception.rst",
            category="Tables",
        ),
        differences=report(
            f"{RESULTS}/tables/differences.csv",
            caption="../report/differences.rst",
            category="Tables",
        ),
        comparison=report(
            expand(f"{RESULTS}/tables/ours_vs_paper_{{policy}}.svg", policy=POLICIES),
            caption="../report/comparison.rst",
            category="Ours vs. the paper",
        ),
        curves=report(
            expand(
                f"{RESULTS}/tables/curves_{{stage}}.svg",
                stage=["sft", "discriminator", "align", "rl"],
            ),
            caption="../report/curves.rst",
            category="Training curves",
        ),
    log:
        f"{RESULTS}/logs/tables.log",
    benchmark:
        f"{RESULTS}/benchmarks/tables.tsv"
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
        models_root=lambda wc, output: Path(output.main).parents[1] / "models",
        runs=lambda wc, input: " ".join(str(Path(m).parent) for m in input.runs),
        code=code("tables"),
    shell:
        "python -m prism.tables --config {params.config} --eval-root {params.eval_root}"
        " --models-root {params.models_root} --runs {params.runs}"
        " --out $(dirname {output.main}) > {log} 2>&1"
