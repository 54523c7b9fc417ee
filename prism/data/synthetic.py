"""Synthetic visual reasoning for tiny mode: coloured shapes in a 2x2 grid, questions with checkable answers.

A 64x64 image becomes exactly 4 visual tokens in the tiny Qwen3-VL (16-px patches, 2x2 merge), one per
grid cell, so what is asked (count, colour, arithmetic on the count, presence) is learnable at tiny scale.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from prism.core.segments import format_response

IMAGE_SIZE = 64
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
KINDS = ("square", "circle")
QUESTION_KINDS = ("count", "colour", "add", "choice", "presence")
NUMBER_WORDS = ("zero", "one", "two", "three", "four")

# Which question kinds each held-out tiny benchmark asks (a stand-in for the paper's 7 benchmarks).
BENCHMARK_QUESTIONS = {
    "mathvista": ("add",),
    "mathverse": ("count",),
    "mathvision": ("add", "count"),
    "wemath": ("count", "add"),
    "mmmu": ("choice",),
    "mmmu_pro": ("choice", "colour"),
    "hallusionbench": ("presence",),
}


@dataclass(frozen=True)
class Scene:
    cells: tuple[int, ...]  # occupied grid cells, 0..3
    colour: str
    kind: str

    @property
    def count(self) -> int:
        return len(self.cells)

    def image(self) -> Image.Image:
        img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), "white")
        draw = ImageDraw.Draw(img)
        half = IMAGE_SIZE // 2
        for cell in self.cells:
            x, y = (cell % 2) * half, (cell // 2) * half
            box = (x + 4, y + 4, x + half - 4, y + half - 4)
            (draw.rectangle if self.kind == "square" else draw.ellipse)(box, fill=COLOURS[self.colour])
        return img

    def caption(self) -> str:
        noun = self.kind if self.count == 1 else f"{self.kind}s"
        return f"- {NUMBER_WORDS[self.count]} {self.colour} {noun}"


@dataclass(frozen=True)
class Example:
    scene: Scene
    question: str
    answer: str
    reasoning: str
    kind: str

    def teacher_response(self) -> str:
        return format_response(self.scene.caption(), self.reasoning, self.answer)


def random_scene(rng: random.Random) -> Scene:
    cells = tuple(sorted(rng.sample(range(4), rng.randint(1, 4))))
    return Scene(cells, rng.choice(list(COLOURS)), rng.choice(KINDS))


def ask(scene: Scene, kind: str, rng: random.Random) -> Example:
    n, colour = scene.count, scene.colour
    if kind == "count":
        return Example(scene, "How many shapes are in the image?", str(n), f"I count {n} shapes.", kind)
    if kind == "colour":
        return Example(scene, "What colour are the shapes?", colour, f"The shapes are {colour}.", kind)
    if kind == "add":
        k = rng.randint(1, 3)
        question = f"If {k} more shapes were added, how many shapes would there be?"
        return Example(scene, question, str(n + k), f"I count {n} shapes. {n} + {k} = {n + k}.", kind)
    if kind == "choice":
        options = rng.sample(list(COLOURS), len(COLOURS))
        letter = "ABCD"[options.index(colour)]
        listed = " ".join(f"{letter_}. {name}" for letter_, name in zip("ABCD", options, strict=True))
        question = f"What colour are the shapes? {listed}"
        return Example(scene, question, letter, f"The shapes are {colour}, option {letter}.", kind)
    if kind == "presence":
        asked = colour if rng.random() < 0.5 else rng.choice([c for c in COLOURS if c != colour])
        answer = "yes" if asked == colour else "no"
        reasoning = (
            f"The shapes are {colour}, so a {asked} shape is {'' if answer == 'yes' else 'not '}there."
        )
        return Example(scene, f"Is there a {asked} shape in the image?", answer, reasoning, kind)
    raise ValueError(f"unknown question kind {kind!r}; expected one of {QUESTION_KINDS}")


def examples(n: int, seed: int, kinds: tuple[str, ...] = QUESTION_KINDS) -> list[Example]:
    rng = random.Random(seed)
    return [ask(random_scene(rng), rng.choice(kinds), rng) for _ in range(n)]


def corrupt(example: Example, rng: random.Random) -> tuple[str, str]:
    """A plausible wrong (caption, reasoning) pair: the 'student' side of a warmup pair."""
    scene = example.scene
    wrong_colour = rng.choice([c for c in COLOURS if c != scene.colour])
    other_cells = tuple(
        sorted(rng.sample(range(4), rng.choice([c for c in range(1, 5) if c != scene.count])))
    )
    wrong = Scene(other_cells, wrong_colour if rng.random() < 0.5 else scene.colour, scene.kind)
    caption = f"<caption>\n{wrong.caption()}\n</caption>"
    wrong_answer = str(int(example.answer) + 1) if example.answer.isdigit() else "unsure"
    reasoning = f"<think>\nI guess.\n</think>\n<answer>\n{wrong_answer}\n</answer>"
    return caption, reasoning


def corpus() -> list[str]:
    """Every kind of text the tiny models meet, to train their tokenizer on."""
    texts = []
    for ex in examples(400, seed=12345):
        texts += [ex.question, ex.teacher_response(), *corrupt(ex, random.Random(0))]
    return texts


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
