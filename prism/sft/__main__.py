"""Stage 1 SFT: `python -m prism.sft --config JSON --model BASE --data SFT_DATA --out DIR --work DIR`."""

from prism.core.training import run_stage

# The module each engine runs: only the chosen one is imported, and only its code is the job's.
ENGINES = {"cpu": "prism.sft.cpu", "llamafactory": "prism.sft.llamafactory"}

if __name__ == "__main__":
    run_stage(
        "sft",
        __doc__,
        ("model", "data"),
        issue=6,
        runners=ENGINES,
        engine=lambda cfg: cfg["engine"],
    )
