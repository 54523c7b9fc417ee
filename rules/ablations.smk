# The paper's ablation rows that train their own chain: the same rules as the main runs, other inputs.


use rule warmup_discriminator as warmup_dense_discriminator with:
    input:
        model=base_model(CFG.ablations.dense_discriminator),
        data=f"{RESULTS}/data/warmup/{MANIFEST}",
    output:
        manifest=ABLATION_DISCRIMINATORS["dense_discriminator"],
    log:
        f"{RESULTS}/logs/discriminator/warmup-dense.log",
    benchmark:
        f"{RESULTS}/benchmarks/discriminator/warmup-dense.tsv"
    params:
        config=warmup_config("dense"),
        work=work_dir("discriminator", "warmup-dense"),


use rule warmup_discriminator as warmup_text_only_discriminator with:
    output:
        manifest=ABLATION_DISCRIMINATORS["text_only_discriminator"],
    log:
        f"{RESULTS}/logs/discriminator/warmup-text-only.log",
    benchmark:
        f"{RESULTS}/benchmarks/discriminator/warmup-text-only.tsv"
    params:
        config=warmup_config("moe", sees_images=False),
        work=work_dir("discriminator", "warmup-text-only"),


use rule prepare_dataset as prepare_sft_subset with:
    output:
        manifest=f"{RESULTS}/data/{{dataset}}-subset/{MANIFEST}",
    log:
        f"{RESULTS}/logs/data/prepare-{{dataset}}-subset.log",
    benchmark:
        f"{RESULTS}/benchmarks/data/prepare-{{dataset}}-subset.tsv"
    localrule: True
    params:
        spec=as_arg({"parts": CFG.ablations.sft_subset}),


use rule sft as sft_subset with:
    input:
        model=lambda wc: base_model(CFG.policy(wc.policy).model),
        data=f"{RESULTS}/data/sft-subset/{MANIFEST}",
    output:
        manifest=subset_sft_checkpoint("{policy}"),
    log:
        f"{RESULTS}/logs/ablations/sft_subset/{{policy}}/sft.log",
    benchmark:
        f"{RESULTS}/benchmarks/ablations/sft_subset/{{policy}}/sft.tsv"
    params:
        work=lambda wc: work_dir("ablations", "sft_subset", wc.policy, "sft"),


use rule align as align_ablation with:
    input:
        model=ablation_start,
        disc=ablation_discriminator,
        data=f"{RESULTS}/data/align/{MANIFEST}",
    output:
        manifest=f"{RESULTS}/models/ablations/{{ablation}}/{{policy}}/prism/{MANIFEST}",
    log:
        f"{RESULTS}/logs/ablations/{{ablation}}/{{policy}}/align.log",
    benchmark:
        f"{RESULTS}/benchmarks/ablations/{{ablation}}/{{policy}}/align.tsv"
    params:
        work=lambda wc: work_dir("ablations", wc.ablation, wc.policy, "align"),


use rule rl as rl_ablation with:
    input:
        model=f"{RESULTS}/models/ablations/{{ablation}}/{{policy}}/prism/{MANIFEST}",
        data=f"{RESULTS}/data/rl/{MANIFEST}",
    output:
        manifest=f"{RESULTS}/models/ablations/{{ablation}}/{{policy}}/prism-{{algo}}/{MANIFEST}",
    log:
        f"{RESULTS}/logs/ablations/{{ablation}}/{{policy}}/prism-{{algo}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/ablations/{{ablation}}/{{policy}}/prism-{{algo}}.tsv"
    params:
        work=lambda wc: work_dir(
            "ablations", wc.ablation, wc.policy, f"prism-{wc.algo}"
        ),


rule ablation_tables:
    """The paper's ablation table from the ablation rows' benchmark JSONs, beside the published numbers: a
    target of its own (results/tables/ablations.csv), so the main table never waits on the ablation
    chains."""
    input:
        scores=expand(
            f"{RESULTS}/eval/{CFG.ablations.policy}/{{variant}}/{{benchmark}}.json",
            variant=[variant for _, variant in ablation_rows()],
            benchmark=CFG.eval.benchmarks,
        ),
        paper=CFG.ablations.paper_results,
    output:
        **{
            name: report(
                f"{RESULTS}/tables/{name}.csv",
                caption="../report/ablations.rst",
                category="Tables",
            )
            for name in ("ablations", "ablations_vs_paper")
        },
    log:
        f"{RESULTS}/logs/ablation_tables.log",
    benchmark:
        f"{RESULTS}/benchmarks/ablation_tables.tsv"
    localrule: True
    conda:
        "../envs/workflow.yaml"
    params:
        config=as_arg(
            {
                "benchmarks": CFG.eval.benchmarks,
                "policy": CFG.policy(CFG.ablations.policy).model_dump(),
                "rows": ablation_rows(),
                "paper_results": CFG.ablations.paper_results,
            }
        ),
        eval_root=lambda wc, input: Path(input.scores[0]).parents[2],
        code=code("tables.ablations"),
    shell:
        "python -m prism.tables.ablations --config {params.config} --eval-root {params.eval_root}"
        " --out $(dirname {output.ablations}) > {log} 2>&1"
