"""One parser for the caption/think/answer format: the alignment segmenter and the RL format gate."""

from __future__ import annotations

import re
from dataclasses import dataclass

# The whole response must be exactly these three blocks, in order, with only whitespace around them.
_STRICT = re.compile(
    r"^\s*(<caption>.*?</caption>)\s*(<think>.*?</think>\s*<answer>.*?</answer>)\s*$", re.DOTALL
)
# As in the reference: the answer is the first <answer> block, even where the gate let a second one through.
_FIRST_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


@dataclass(frozen=True)
class Segments:
    """A response split for the discriminator: perception (caption) and reasoning (think + answer)."""

    valid: bool
    caption: str = ""
    reasoning: str = ""
    answer: str = ""


def parse_response(text: str) -> Segments:
    """Split a response; a response off the strict format is flagged invalid, never guessed at."""
    match = _STRICT.match(text)
    if match is None:
        return Segments(valid=False)
    caption, reasoning = match.groups()
    answer = _FIRST_ANSWER.search(text).group(1)
    return Segments(valid=True, caption=caption, reasoning=reasoning, answer=answer.strip())


def first_answer(text: str) -> str:
    """The first `<answer>` block's content, stripped; "" when there is none."""
    match = _FIRST_ANSWER.search(text)
    return match.group(1).strip() if match else ""


def format_response(caption: str, reasoning: str, answer: str) -> str:
    """The reference layout of a teacher response, from the bare texts of its three parts."""
    return f"<caption>\n{caption}\n</caption>\n<think>\n{reasoning}\n</think>\n<answer>\n{answer}\n</answer>"
