"""The CPU SFT engine encodes each example once: its batches are those the processor makes of the rows."""

import torch

from prism.core.modeling import load_processor, supervised_batch
from prism.core.prompts import prompt_messages
from prism.data import synthetic
from prism.sft.cpu import EncodedExamples


def test_a_batch_of_examples_encoded_once_is_the_batch_encoded_together(tiny_dir):
    processor = load_processor(tiny_dir)
    rows = [
        {"prompt": prompt_messages(e.question), "image": e.scene.image(), "response": e.teacher_response()}
        for e in synthetic.examples(12, 0)
    ]
    examples = EncodedExamples(processor, rows, max_length=256)
    for picked in (rows[:5], rows[7:], rows[3:9][::-1]):
        together = supervised_batch(processor, picked, [r["response"] for r in picked], 256)
        collated = examples.batch(picked)
        assert set(collated) == set(together)
        assert len({r["response"] for r in picked}) > 1  # responses of different lengths, so padding
        for key, value in together.items():
            assert collated[key].dtype == value.dtype and torch.equal(collated[key], value), key
