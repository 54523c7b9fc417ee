"""Stage 2 alignment: `python -m prism.align --config JSON --model SFT --disc DISC --data ALIGN ...`."""

from prism.align import cpu, verl_engine
from prism.core.training import run_stage

if __name__ == "__main__":
    runners = {"cpu": cpu.run, "verl": verl_engine.run}
    run_stage(
        "align",
        __doc__,
        ("model", "disc", "data"),
        issue=4,
        runners=runners,
        engine=lambda cfg: cfg["engine"],
    )
