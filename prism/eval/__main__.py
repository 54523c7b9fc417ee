"""Evaluate one model on every configured benchmark:
`python -m prism.eval --config JSON --model DIR --data BENCH_DIR --out DIR --work DIR`."""

from prism.core.training import run_stage
from prism.eval.cpu import run

if __name__ == "__main__":
    run_stage(
        "eval", __doc__, ("model", "data"), issue=7, runners={"cpu": run}, engine=lambda cfg: cfg["engine"]
    )
