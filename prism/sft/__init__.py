"""Stage 1: supervised fine-tuning on teacher demonstrations."""
