"""Stage 3 RLVR: `python -m prism.rl --config JSON --model INIT --data RL --out DIR --work DIR`."""

from prism.core.training import run_stage
from prism.rl.cpu import run

if __name__ == "__main__":
    run_stage("rl", __doc__, ("model", "data"), issue=5, runner=run, engine=lambda cfg: cfg["engine"])
