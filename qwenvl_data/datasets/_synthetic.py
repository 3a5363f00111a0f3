"""Shapes VQA generated on the fly: no files, deterministic by ``(seed, index)``, learnable by a tiny model.

Each sample draws one question type, then its answer uniformly from that type's choices, then images that
make the answer true: shapes in the cells of a grid (3x3 by default) so they never overlap, each at a random size
and place inside its cell and in a slightly varied shade of its color, so that no two pictures are alike and a
held-out set (another seed) never shows a training picture. Question types and answers:

- ``color``: "What color is the triangle?" -> one of ``COLORS`` (the asked shape appears once).
- ``shape``: "Which shape is red?" -> one of ``SHAPES`` (the asked color appears once).
- ``count``: "How many circles are there?" -> "1".."4".
- ``position``: "Is the square on the left or the right?" -> "left" | "right".
- ``which_image`` (2..``max_images`` images): "Which image has the square?" -> "first" | "second" | ...

Every sample carries ``answer`` (ground truth), ``question_type``, ``choices`` (the possible answers for this
question), ``chance`` (= 1 / len(choices), the accuracy of guessing) and ``description`` (the pictures in words,
for people reading a run's examples), next to the transformed keys.
"""

import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from qwenvl_data.datasets._map_style import ChatDataset
from qwenvl_data.datasets._processing import RecordProcessor

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (40, 70, 220),
    "yellow": (240, 210, 30),
    "purple": (140, 50, 170),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle")
ORDINALS = ("first", "second", "third", "fourth")
COUNTS = ("1", "2", "3", "4")
QUESTION_TYPES = ("color", "shape", "count", "position", "which_image")
MAX_DISTRACTORS = 2


class _Layout(NamedTuple):
    """How a scene is laid out: shapes sit in the cells of a ``grid`` x ``grid`` board, never overlapping."""

    grid: int
    max_distractors: int

    def check(self, question_types: Sequence[str]) -> None:
        """Refuse a layout with too few cells for the questions asked (the answer must stay unique)."""
        if not 0 <= self.max_distractors <= MAX_DISTRACTORS:
            raise ValueError(f"max_distractors must be in 0..{MAX_DISTRACTORS}, got {self.max_distractors}")
        if "position" in question_types and self.grid < 3:
            raise ValueError(f"position questions need grid >= 3 (left, middle, right columns), got {self.grid}")
        shapes = {"count": len(COUNTS) + self.max_distractors, "which_image": 1 + min(1, self.max_distractors)}
        for question_type in question_types:
            if shapes.get(question_type, 1 + self.max_distractors) > self.grid**2:
                raise ValueError(
                    f"{question_type} questions with max_distractors={self.max_distractors} need more than the "
                    f"{self.grid**2} cells of grid={self.grid}"
                )
BACKGROUND = (235, 235, 235)
# A shape's side as a fraction of its cell (drawn per shape), the empty border kept inside every cell (so
# shapes in neighbouring cells never touch), and the most each color channel of a shape varies.
SHAPE_SCALE = (0.65, 0.9)
CELL_MARGIN = 0.05
COLOR_JITTER = 10


def answer_choices(question_type: str, num_images: int = 2) -> tuple[str, ...]:
    """The possible answers of a question type (``which_image`` depends on the number of images)."""
    choices = {
        "color": tuple(COLORS),
        "shape": SHAPES,
        "count": COUNTS,
        "position": ("left", "right"),
        "which_image": ORDINALS[:num_images],
    }
    return choices[question_type]


def _draw(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, shape: str, color: str, cell: tuple[int, int], cell_size: float
) -> None:
    """One shape in its cell, at a random size and place inside it, in a slightly varied shade of its color.

    The variation makes every picture new (a held-out picture is never one seen in training) while the answer
    stays readable: each channel moves by at most ``COLOR_JITTER``, far less than two palette colors differ.
    """
    row, col = cell
    side = cell_size * rng.uniform(*SHAPE_SCALE)
    free = cell_size * (1 - 2 * CELL_MARGIN) - side
    x0 = col * cell_size + cell_size * CELL_MARGIN + rng.uniform(0, free)
    y0 = row * cell_size + cell_size * CELL_MARGIN + rng.uniform(0, free)
    x1, y1 = x0 + side, y0 + side
    fill = tuple(int(np.clip(c + rng.integers(-COLOR_JITTER, COLOR_JITTER + 1), 0, 255)) for c in COLORS[color])
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    elif shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=fill)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)


class _Scene(NamedTuple):
    """A drawn picture and what it shows in words (for people reading a run's examples; never a model input)."""

    image: Image.Image
    description: str


def _scene(rng: np.random.Generator, size: int, items: list[tuple[str, str, tuple[int, int]]], grid: int) -> _Scene:
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for shape, color, cell in items:
        _draw(draw, rng, shape, color, cell, size / grid)
    return _Scene(image, f"{size}x{size} px: {_describe(items, grid)}")


def _describe(items: list[tuple[str, str, tuple[int, int]]], grid: int) -> str:
    """E.g. "an orange circle" (one cell) or "a red square at row 1, column 3, ..." (row by row)."""
    words = []
    for shape, color, (row, col) in sorted(items, key=lambda item: item[2]):
        where = "" if grid == 1 else f" at row {row + 1}, column {col + 1}"
        words.append(f"{'an' if color[0] in 'aeiou' else 'a'} {color} {shape}{where}")
    return ", ".join(words) or "nothing"


def _cells(rng: np.random.Generator, count: int, pool: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [pool[i] for i in rng.choice(len(pool), size=count, replace=False)]


def _board(grid: int) -> list[tuple[int, int]]:
    return [(r, c) for r in range(grid) for c in range(grid)]


def _other(rng: np.random.Generator, options: Sequence[str], excluded: str) -> str:
    return str(rng.choice([o for o in options if o != excluded]))


def _distractors(
    rng: np.random.Generator, cells: list, avoid_shape: str | None = None, avoid_color: str | None = None
) -> list:
    """Shapes in ``cells`` that never repeat the asked shape (or color), so the answer stays unique."""
    items = []
    for cell in cells:
        shape = _other(rng, SHAPES, avoid_shape) if avoid_shape else str(rng.choice(SHAPES))
        color = _other(rng, tuple(COLORS), avoid_color) if avoid_color else str(rng.choice(tuple(COLORS)))
        items.append((shape, color, cell))
    return items


def _color_question(rng: np.random.Generator, size: int, layout: _Layout) -> tuple[list[_Scene], str, str]:
    shape, answer = str(rng.choice(SHAPES)), str(rng.choice(tuple(COLORS)))
    cells = _cells(rng, 1 + int(rng.integers(0, layout.max_distractors + 1)), _board(layout.grid))
    items = [(shape, answer, cells[0])] + _distractors(rng, cells[1:], avoid_shape=shape)
    return [_scene(rng, size, items, layout.grid)], f"What color is the {shape}?", answer


def _shape_question(rng: np.random.Generator, size: int, layout: _Layout) -> tuple[list[_Scene], str, str]:
    color, answer = str(rng.choice(tuple(COLORS))), str(rng.choice(SHAPES))
    cells = _cells(rng, 1 + int(rng.integers(0, layout.max_distractors + 1)), _board(layout.grid))
    items = [(answer, color, cells[0])] + _distractors(rng, cells[1:], avoid_color=color)
    return [_scene(rng, size, items, layout.grid)], f"Which shape is {color}?", answer


def _count_question(rng: np.random.Generator, size: int, layout: _Layout) -> tuple[list[_Scene], str, str]:
    shape, answer = str(rng.choice(SHAPES)), str(rng.choice(COUNTS))
    cells = _cells(rng, int(answer) + int(rng.integers(0, layout.max_distractors + 1)), _board(layout.grid))
    items = [(shape, str(rng.choice(tuple(COLORS))), cell) for cell in cells[: int(answer)]]
    items += _distractors(rng, cells[int(answer) :], avoid_shape=shape)
    return [_scene(rng, size, items, layout.grid)], f"How many {shape}s are there?", answer


def _position_question(rng: np.random.Generator, size: int, layout: _Layout) -> tuple[list[_Scene], str, str]:
    shape, answer = str(rng.choice(SHAPES)), str(rng.choice(("left", "right")))
    grid = layout.grid
    column = 0 if answer == "left" else grid - 1
    target = _cells(rng, 1, [(r, column) for r in range(grid)])[0]
    # distractors stay in the middle column(s): only the target is to a side
    middle = [(r, c) for r in range(grid) for c in range(1, grid - 1)]
    items = [(shape, str(rng.choice(tuple(COLORS))), target)]
    items += _distractors(rng, _cells(rng, int(rng.integers(0, layout.max_distractors + 1)), middle), avoid_shape=shape)
    return [_scene(rng, size, items, layout.grid)], f"Is the {shape} on the left or the right?", answer


def _which_image_question(
    rng: np.random.Generator, size: int, layout: _Layout, num_images: int
) -> tuple[list[_Scene], str, str]:
    shape = str(rng.choice(SHAPES))
    position = int(rng.integers(num_images))
    scenes = []
    for i in range(num_images):
        cells = _cells(rng, 1 + int(rng.integers(0, min(1, layout.max_distractors) + 1)), _board(layout.grid))
        items = _distractors(rng, cells, avoid_shape=shape)
        if i == position:
            items[0] = (shape, items[0][1], items[0][2])
        scenes.append(_scene(rng, size, items, layout.grid))
    return scenes, f"Which image has the {shape}?", ORDINALS[position]


class SyntheticVQASource:
    """Generated shapes-VQA records in the internal conversation form, by index.

    Args:
        num_samples: dataset length.
        seed: samples are a pure function of ``(seed, index)``.
        image_size: side in pixels, or ``(min, max)`` drawn per sample (square images).
        question_types: subset of ``QUESTION_TYPES`` to draw from (uniformly).
        max_images: most images in a ``which_image`` sample (2..4).
        max_distractors: most other shapes beside the asked one(s) in a single-image question (0..2).
        grid: shapes sit in the cells of a ``grid`` x ``grid`` board (default 3). ``grid=1`` with
            ``max_distractors=0`` draws one shape per picture, 65-90% of its side: the easiest task, which
            ``qwen2_5_vl_mini`` learns on CPU in configs/tiny_synthetic.yaml.
    """

    def __init__(
        self,
        num_samples: int,
        seed: int = 0,
        image_size: int | tuple[int, int] = (56, 112),
        question_types: Sequence[str] = QUESTION_TYPES,
        max_images: int = 2,
        max_distractors: int = 2,
        grid: int = 3,
    ) -> None:
        unknown = set(question_types) - set(QUESTION_TYPES)
        if unknown or not question_types:
            raise ValueError(f"question_types must be a non-empty subset of {QUESTION_TYPES}, got {question_types}")
        if not 2 <= max_images <= len(ORDINALS):
            raise ValueError(f"max_images must be in 2..{len(ORDINALS)}, got {max_images}")
        self.layout = _Layout(grid, max_distractors)
        self.layout.check(question_types)
        low, high = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if not 0 < low <= high:
            raise ValueError(f"image_size must be a positive side or a (min, max) pair, got {image_size}")
        self.num_samples, self.seed, self.size_range = num_samples, seed, (low, high)
        self.question_types, self.max_images = tuple(question_types), max_images

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} synthetic samples")
        rng = np.random.default_rng([self.seed, index])
        question_type = str(rng.choice(self.question_types))
        size = int(rng.integers(self.size_range[0], self.size_range[1] + 1))
        num_images = 1
        if question_type == "which_image":
            num_images = int(rng.integers(2, self.max_images + 1))
            scenes, question, answer = _which_image_question(rng, size, self.layout, num_images)
        else:
            generate = {
                "color": _color_question,
                "shape": _shape_question,
                "count": _count_question,
                "position": _position_question,
            }[question_type]
            scenes, question, answer = generate(rng, size, self.layout)
        choices = answer_choices(question_type, num_images)
        content = [{"type": "image", "image": scene.image} for scene in scenes] + [{"type": "text", "text": question}]
        described = [scene.description for scene in scenes]
        if len(described) > 1:
            described = [f"image {i + 1}, {text}" for i, text in enumerate(described)]
        return {
            "id": f"synthetic-{self.seed}-{index}",
            "messages": [{"role": "user", "content": content}, {"role": "assistant", "content": answer}],
            "answer": answer,
            "question_type": question_type,
            "choices": list(choices),
            "chance": 1.0 / len(choices),
            "description": "; ".join(described),
        }


def synthetic_vqa_dataset(
    model_transform: Callable[[dict], dict] | None,
    *,
    num_samples: int = 1000,
    seed: int = 0,
    image_size: int | tuple[int, int] = (56, 112),
    question_types: Sequence[str] = QUESTION_TYPES,
    max_images: int = 2,
    max_distractors: int = 2,
    grid: int = 3,
    max_tokens: int | None = None,
    on_error: str = "raise",
) -> ChatDataset:
    """Builder (YAML ``_component_``) of the generated shapes-VQA dataset; the embedded default.

    Args:
        model_transform: e.g. ``Qwen2_5_VLTransform``; None yields internal-form samples (PIL images).
        num_samples, seed, image_size, question_types, max_images, max_distractors, grid: as
            ``SyntheticVQASource``.
        max_tokens, on_error: as ``ChatDataset``.

    Returns:
        a ``ChatDataset``; each sample also has ``answer``, ``question_type``, ``choices`` and ``chance``.

    Example:
        >>> ds = synthetic_vqa_dataset(None, num_samples=10, seed=0)
        >>> sample = ds[0]
        >>> sample["answer"] in sample["choices"]
        True
    """
    source = SyntheticVQASource(num_samples, seed, image_size, question_types, max_images, max_distractors, grid)
    processor = RecordProcessor(
        model_transform, format="openai", image_dir=os.getcwd(),  # samples hold PIL images, never paths
        on_error=on_error, max_tokens=max_tokens, keep_fields=("answer", "question_type", "choices", "chance", "description"),
    )  # fmt: skip
    return ChatDataset(source, processor)
