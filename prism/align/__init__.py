"""Stage 2: PRISM alignment against the MoE discriminator."""
