"""PRISM post-training pipeline: the algorithm code and the per-stage engines run by the workflow."""

import os

__version__ = "0.1.0"

# torch's OpenMP threads spin while they wait for work. Where a job shares its cores (tiny mode's jobs side
# by side, or the tests beside the tiny run), the spinning threads take the cores their neighbours need:
# a 2-thread SFT step beside one busy process took 2.4 s instead of 0.17 s. Waiting passively costs a job
# alone on its cores nothing measurable. Set before torch loads, for this process and what it starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
