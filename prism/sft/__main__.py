"""Stage 1 SFT: `python -m prism.sft --config JSON --model BASE --data SFT_DATA --out DIR --work DIR`."""

from prism.core.training import run_stage
from prism.sft import cpu, llamafactory

if __name__ == "__main__":
    run_stage(
        "sft",
        __doc__,
        ("model", "data"),
        issue=6,
        runners={"cpu": cpu.run, "llamafactory": llamafactory.run},
        engine=lambda cfg: cfg["engine"],
    )
