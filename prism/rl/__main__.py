"""Stage 3 RLVR: `python -m prism.rl --config JSON --model INIT --data RL --out DIR --work DIR`."""

from prism.core.training import run_stage

# The module each engine runs: only the chosen one is imported, and only its code is the job's.
ENGINES = {"cpu": "prism.rl.cpu", "verl": "prism.rl.verl_engine"}

if __name__ == "__main__":
    run_stage("rl", __doc__, ("model", "data"), issue=5, runners=ENGINES, engine=lambda cfg: cfg["engine"])
