"""Stage 3: RLVR with GRPO, DAPO and GSPO."""
