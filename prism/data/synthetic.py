"""Synthetic visual reasoning for tiny mode: coloured shapes in a 2x2 grid, questions with checkable answers.

A 64x64 image becomes exactly 4 visual tokens in the tiny Qwen3-VL (16-px patches, 2x2 merge), one per
grid cell, so what is asked (count, colour, arithmetic on the count, presence) is learnable at tiny scale.
"""

from __future__ import annotations

import io
import random
import re
from dataclasses import dataclass, replace

from PIL import Image, ImageDraw

from prism.core.segments import format_response

IMAGE_SIZE = 64
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
KINDS = ("square", "circle")
QUESTION_KINDS = ("count", "colour", "add", "choice", "presence")
NUMBER_WORDS = ("zero", "one", "two", "three", "four")

# Graded difficulty of the held-out benchmarks: each level shrinks the shapes, fades their colour towards
# grey and speckles more pixels, so a policy trained on clean images is tested from easy to hard.
LEVELS = 4
SHRINK_PER_LEVEL = 2  # pixels off each side of a shape
FADE_PER_LEVEL = 0.2  # fraction of the way to grey
NOISE_PER_LEVEL = 0.12  # fraction of pixels set to a random colour

# Which question kinds each held-out tiny benchmark asks (a stand-in for the paper's 7 benchmarks). Every
# benchmark holds counting questions, which a tiny policy learns and loses as the images get harder, so no
# column sits at chance for every variant while the colour questions stay hard.
BENCHMARK_QUESTIONS = {
    "mathvista": ("add",),
    "mathverse": ("count",),
    "mathvision": ("add", "count"),
    "wemath": ("count", "add"),
    "mmmu": ("choice", "count"),
    "mmmu_pro": ("choice", "colour", "add"),
    "hallusionbench": ("presence", "count"),
}


@dataclass(frozen=True)
class Scene:
    cells: tuple[int, ...]  # occupied grid cells, 0..3
    colour: str
    kind: str
    level: int = 0  # difficulty: 0 is the clean image the training sets use
    noise_seed: int = 0

    @property
    def count(self) -> int:
        return len(self.cells)

    def image(self) -> Image.Image:
        img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), "white")
        draw = ImageDraw.Draw(img)
        half = IMAGE_SIZE // 2
        margin = 4 + SHRINK_PER_LEVEL * self.level
        fill = faded(COLOURS[self.colour], FADE_PER_LEVEL * self.level)
        for cell in self.cells:
            x, y = (cell % 2) * half, (cell // 2) * half
            box = (x + margin, y + margin, x + half - margin, y + half - margin)
            (draw.rectangle if self.kind == "square" else draw.ellipse)(box, fill=fill)
        return speckled(img, NOISE_PER_LEVEL * self.level, self.noise_seed) if self.level else img

    def truth(self) -> dict:
        """What a caption must say about the scene: the perception measure's answer key."""
        return {"count": self.count, "colour": self.colour, "kind": self.kind}

    def caption(self) -> str:
        noun = self.kind if self.count == 1 else f"{self.kind}s"
        return f"- {NUMBER_WORDS[self.count]} {self.colour} {noun}"


def faded(rgb: tuple[int, int, int], amount: float) -> tuple[int, ...]:
    return tuple(round(c + (128 - c) * amount) for c in rgb)


def speckled(img: Image.Image, fraction: float, seed: int) -> Image.Image:
    rng = random.Random(seed)
    pixels = img.load()
    for _ in range(round(fraction * IMAGE_SIZE * IMAGE_SIZE)):
        x, y = rng.randrange(IMAGE_SIZE), rng.randrange(IMAGE_SIZE)
        pixels[x, y] = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
    return img


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


def graded_examples(n: int, seed: int, kinds: tuple[str, ...]) -> list[Example]:
    """A benchmark: the examples of `examples(n, seed, kinds)`, the i-th shown at difficulty i % LEVELS."""
    return [
        replace(ex, scene=replace(ex.scene, level=i % LEVELS, noise_seed=seed * 100_003 + i))
        for i, ex in enumerate(examples(n, seed, kinds))
    ]


_CAPTION_LINE = re.compile(r"^-\s*(\w+)\s+(\w+)\s+(\w+?)s?$")


def caption_score(caption: str, truth: dict) -> float:
    """The fraction of the scene's count, colour and shape kind that a caption states correctly (0 for a
    caption off the teacher's one-line form): perception measured against the generator's own truth."""
    body = caption.removeprefix("<caption>").removesuffix("</caption>").strip()
    match = _CAPTION_LINE.match(body)
    if match is None:
        return 0.0
    count, colour, kind = match.groups()
    stated = (count == NUMBER_WORDS[truth["count"]], colour == truth["colour"], kind == truth["kind"])
    return sum(stated) / len(stated)


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
