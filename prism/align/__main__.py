"""Stage 2 alignment: `python -m prism.align --config JSON --model SFT --disc DISC --data ALIGN ...`."""

from prism.align.cpu import run
from prism.core.training import run_stage

if __name__ == "__main__":
    run_stage(
        "align",
        __doc__,
        ("model", "disc", "data"),
        issue=4,
        runners={"cpu": run},
        engine=lambda cfg: cfg["engine"],
    )
