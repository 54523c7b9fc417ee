"""The CPU SFT engine encodes each example once: its batches are those the processor makes of the rows.
Logits are computed only where a label or a response token is predicted, for the same loss and log-probs."""

import torch

from prism.core.modeling import generate, load_model, load_processor, supervised_batch, token_logprobs
from prism.core.prompts import prompt_messages
from prism.data import synthetic
from prism.sft.cpu import EncodedExamples, loss_window


def tiny_rows(n: int) -> list[dict]:
    return [
        {"prompt": prompt_messages(e.question), "image": e.scene.image(), "response": e.teacher_response()}
        for e in synthetic.examples(n, 0)
    ]


def test_a_batch_of_examples_encoded_once_is_the_batch_encoded_together(tiny_dir):
    processor = load_processor(tiny_dir)
    rows = tiny_rows(12)
    examples = EncodedExamples(processor, rows, max_length=256)
    for picked in (rows[:5], rows[7:], rows[3:9][::-1]):
        together = supervised_batch(processor, picked, [r["response"] for r in picked], 256)
        collated = examples.batch(picked)
        assert set(collated) == set(together)
        assert len({r["response"] for r in picked}) > 1  # responses of different lengths, so padding
        for key, value in together.items():
            assert collated[key].dtype == value.dtype and torch.equal(collated[key], value), key


def test_logits_kept_only_where_a_label_or_response_is_predicted_change_no_loss_and_no_log_prob(tiny_dir):
    processor, model = load_processor(tiny_dir), load_model(tiny_dir)
    rows = tiny_rows(6)
    batch = EncodedExamples(processor, rows, max_length=256).batch(rows)
    window = loss_window(batch)
    assert window["logits_to_keep"] < batch["input_ids"].shape[1] // 2  # most of a tiny example is prompt
    torch.testing.assert_close(model(**window).loss, model(**batch).loss)

    rollouts = generate(model, processor, rows, 16, 1.0)
    prompt = rollouts.prompt_length
    logits = model(**rollouts.inputs).logits[:, prompt - 1 : -1]
    full = torch.log_softmax(logits, -1).gather(-1, rollouts.inputs["input_ids"][:, prompt:, None])[..., 0]
    torch.testing.assert_close(token_logprobs(model, rollouts.inputs, prompt), full)
