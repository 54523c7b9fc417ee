"""Evaluate one model on every configured benchmark:
`python -m prism.eval --config JSON --model DIR --out DIR --work DIR` with `--data BENCH_DIR` (cpu engine:
the synthetic sets) or `--judge MODEL_DIR --benchmarks CACHE_DIR` (lmms_eval engine: the judge served
beside the model, and the benchmarks' data sets as prism.eval.fetch cached them)."""

from prism.core.training import run_stage

# The module each engine runs: only the chosen one is imported, and only its code is the job's.
ENGINES = {"cpu": "prism.eval.cpu", "lmms_eval": "prism.eval.lmms"}

if __name__ == "__main__":
    run_stage(
        "eval",
        __doc__,
        ("model",),
        issue=7,
        runners=ENGINES,
        engine=lambda cfg: cfg["engine"],
        optional=("data", "judge", "benchmarks"),
    )
