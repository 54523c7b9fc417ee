"""Stage 2 alignment: `python -m prism.align --config JSON --model SFT --disc DISC --data ALIGN ...`."""

from prism.core.training import run_stage

# The module each engine runs: only the chosen one is imported, and only its code is the job's.
ENGINES = {"cpu": "prism.align.cpu", "verl": "prism.align.verl_engine"}

if __name__ == "__main__":
    run_stage(
        "align",
        __doc__,
        ("model", "disc", "data"),
        issue=4,
        runners=ENGINES,
        engine=lambda cfg: cfg["engine"],
    )
