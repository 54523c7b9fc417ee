"""Stage 3 RLVR: `python -m prism.rl --config JSON --model INIT --data RL --out DIR --work DIR`."""

from prism.core.training import run_stage
from prism.rl import cpu, verl_engine

if __name__ == "__main__":
    runners = {"cpu": cpu.run, "verl": verl_engine.run}
    run_stage("rl", __doc__, ("model", "data"), issue=5, runners=runners, engine=lambda cfg: cfg["engine"])
