"""The MoE discriminator: sparse upcycling, the value-head model, pairwise warmup."""
