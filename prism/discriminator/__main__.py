"""Discriminator stages: `python -m prism.discriminator {upcycle,warmup} --config JSON ...`."""

import sys

from prism.core.training import run_stage
from prism.discriminator.stages import upcycle_stage, warmup_stage

if __name__ == "__main__":
    step = sys.argv[1] if len(sys.argv) > 1 else ""
    if step == "upcycle":
        run_stage(
            "discriminator", __doc__, ("model",), issue=3, runners={"cpu": upcycle_stage}, argv=sys.argv[2:]
        )
    elif step == "warmup":
        run_stage(
            "discriminator",
            __doc__,
            ("model", "data"),
            issue=3,
            runners={"cpu": warmup_stage, "accelerate": warmup_stage},
            engine=lambda cfg: cfg["warmup"]["engine"],
            argv=sys.argv[2:],
        )
    else:
        sys.exit("usage: python -m prism.discriminator {upcycle,warmup} --config JSON ...")
