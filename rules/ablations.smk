# The paper's ablation rows that train their own chain: the same rules as the main runs, other inputs.


use rule warmup_discriminator as warmup_dense_discriminator with:
    input:
        model=base_model(CFG.ablations.dense_discriminator),
        data=f"{RESULTS}/data/warmup/{MANIFEST}",
        code=code("discriminator", "data"),
    output:
        manifest=f"{RESULTS}/models/discriminator/dense/{MANIFEST}",
    log:
        f"{RESULTS}/logs/discriminator/warmup-dense.log",
    params:
        config=as_arg(
            {
                "architecture": "dense",
                "value_head_dropout": CFG.discriminator.value_head_dropout,
                "warmup": CFG.discriminator.warmup.model_dump(exclude={"resources"}),
            }
        ),
        work=work_dir("discriminator", "warmup-dense"),


use rule align as align_ablation with:
    input:
        model=ablation_start,
        disc=ablation_discriminator,
        data=f"{RESULTS}/data/align/{MANIFEST}",
        code=code("align", "discriminator", "data", "verl", "cluster"),
    output:
        manifest=f"{RESULTS}/models/ablations/{{ablation}}/{{policy}}/prism/{MANIFEST}",
    log:
        f"{RESULTS}/logs/ablations/{{ablation}}/{{policy}}/align.log",
    params:
        work=lambda wc: work_dir("ablations", wc.ablation, wc.policy, "align"),


use rule rl as rl_ablation with:
    input:
        model=f"{RESULTS}/models/ablations/{{ablation}}/{{policy}}/prism/{MANIFEST}",
        data=f"{RESULTS}/data/rl/{MANIFEST}",
        code=code("rl", "data", "verl", "cluster"),
    output:
        manifest=f"{RESULTS}/models/ablations/{{ablation}}/{{policy}}/prism-{{algo}}/{MANIFEST}",
    log:
        f"{RESULTS}/logs/ablations/{{ablation}}/{{policy}}/prism-{{algo}}.log",
    params:
        work=lambda wc: work_dir(
            "ablations", wc.ablation, wc.policy, f"prism-{wc.algo}"
        ),
