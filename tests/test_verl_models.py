"""The discriminator class verl's critic workers load (`prism.verl.models`): each distinct image of a
micro-batch goes through the vision tower once, with the scores and gradients of one pass per copy."""

import torch
from test_align_verl import load_as_verl_does

from prism.core.modeling import load_processor
from prism.core.segments import parse_response
from prism.data import synthetic
from prism.discriminator.model import Discriminator, render
from prism.verl import models


def images_encoded(visual) -> list[int]:
    """How many images each call of a vision tower encodes."""
    calls = []
    visual.register_forward_hook(
        lambda module, args, kwargs, out: calls.append(len(kwargs["grid_thw"])), with_kwargs=True
    )
    return calls


def test_each_distinct_image_of_a_micro_batch_is_encoded_once_with_unchanged_scores_and_gradients(
    disc_dir, tiny_dir
):
    # as verl's critic gets them: every row of a prompt (its rollouts' and teacher's segments) carries
    # its own copy of the prompt's image
    examples = synthetic.examples(2, seed=5)
    questions, images, segments = [], [], []
    for example in examples:
        teacher = parse_response(example.teacher_response())
        for segment in (teacher.caption, teacher.reasoning, teacher.caption + " again"):
            questions.append(example.question)
            images.append(example.scene.image())
            segments.append(segment)
    inputs = render(load_processor(str(tiny_dir)), questions, images, segments)
    assert len(inputs["image_grid_thw"]) == 6

    native = load_as_verl_does(disc_dir)
    reference = Discriminator.load(disc_dir).eval()  # transformers' own forward: one pass per copy
    native_calls, reference_calls = (
        images_encoded(native.model.visual),
        images_encoded(reference.backbone.model.visual),
    )
    scores = native(**inputs).logits[:, -1, 0]
    expected = reference(inputs)
    assert native_calls == [2] and reference_calls == [6]
    assert torch.allclose(scores, expected, atol=1e-5)

    scores.sum().backward()
    expected.sum().backward()
    for name, parameter in native.model.visual.named_parameters():
        other = reference.backbone.model.visual.get_parameter(name)
        assert torch.allclose(parameter.grad, other.grad, atol=1e-5), name


def test_distinct_images_are_found_by_grid_and_pixels():
    grid = torch.tensor([[1, 2, 2], [1, 2, 4], [1, 2, 2], [1, 2, 2]])
    first, wide, other = torch.ones(4, 3), torch.zeros(8, 3), torch.full((4, 3), 2.0)
    pixels = torch.cat([first, wide, first, other])
    distinct, inverse = models.distinct_images(pixels, grid)
    assert inverse == [0, 1, 0, 2]
    assert distinct.grid.tolist() == [[1, 2, 2], [1, 2, 4], [1, 2, 2]]
    assert torch.equal(pixels[distinct.pixels], torch.cat([first, wide, other]))
