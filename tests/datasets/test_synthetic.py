"""Synthetic shapes VQA: deterministic by seed, and every answer true of its image(s), checked by decoding
the pixels (cell by cell: color by nearest palette entry, shape by how much of its box it fills)."""

import hashlib
import re

import numpy as np
import pytest
from omegaconf import OmegaConf
from support.recipes_support import REPO

from qwenvl_data.datasets import QUESTION_TYPES, answer_choices, synthetic_vqa_dataset
from qwenvl_data.datasets._synthetic import COLORS, SyntheticVQASource

ORDINALS = ["first", "second", "third", "fourth"]


def decode_scene(image, grid: int = 3) -> list[tuple[str, str, int]]:
    """(shape, color, column) of every shape drawn on the grid x grid board, read from the pixels only."""
    pixels = np.asarray(image, dtype=np.int32)
    size = pixels.shape[0]
    palette = {name: np.array(rgb) for name, rgb in COLORS.items()}
    found = []
    for row in range(grid):
        for col in range(grid):
            cell = pixels[row * size // grid : (row + 1) * size // grid, col * size // grid : (col + 1) * size // grid]
            distance = {name: np.abs(cell - rgb).sum(-1) for name, rgb in palette.items()}
            color = max(distance, key=lambda name: (distance[name] < 40).sum())
            inside = distance[color] < 40
            if inside.sum() < 10:
                continue
            ys, xs = np.nonzero(inside)
            fill = inside.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
            shape = "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"
            found.append((shape, color, col))
    return found


def true_answer(question: str, scenes: list[list[tuple[str, str, int]]]) -> str:
    if m := re.fullmatch(r"What color is the (\w+)\?", question):
        return next(c for s, c, _ in scenes[0] if s == m[1])
    if m := re.fullmatch(r"Which shape is (\w+)\?", question):
        return next(s for s, c, _ in scenes[0] if c == m[1])
    if m := re.fullmatch(r"How many (\w+)s are there\?", question):
        return str(sum(s == m[1] for s, _, _ in scenes[0]))
    if m := re.fullmatch(r"Is the (\w+) on the left or the right\?", question):
        column = next(col for s, _, col in scenes[0] if s == m[1])
        return {0: "left", 2: "right"}[column]
    m = re.fullmatch(r"Which image has the (\w+)\?", question)
    (index,) = [i for i, scene in enumerate(scenes) if any(s == m[1] for s, _, _ in scene)]
    return ORDINALS[index]


def test_answers_are_true_of_the_pixels_and_the_asked_thing_is_unique():
    ds = synthetic_vqa_dataset(None, num_samples=120, seed=3, image_size=96, max_images=3)
    for i in range(len(ds)):
        sample = ds[i]
        *image_parts, question = sample["messages"][0].content
        scenes = [decode_scene(part["content"]) for part in image_parts]
        assert true_answer(question["content"], scenes) == sample["answer"], (i, question["content"], scenes)
        answer = sample["messages"][1]
        assert (answer.role, answer.content) == ("assistant", [{"type": "text", "content": sample["answer"]}])


def test_same_seed_same_samples_other_seed_other_samples():
    a, b, c = (synthetic_vqa_dataset(None, num_samples=8, seed=s) for s in (0, 0, 1))
    for i in range(8):
        first, second = a[i], b[i]
        assert first["answer"] == second["answer"] and first["id"] == second["id"] == f"synthetic-0-{i}"
        images = [p["content"].tobytes() for p in first["messages"][0].content[:-1]]
        assert images == [p["content"].tobytes() for p in second["messages"][0].content[:-1]]
    assert [a[i]["messages"][0].content[-1]["content"] for i in range(8)] != [
        c[i]["messages"][0].content[-1]["content"] for i in range(8)
    ]


def test_every_question_type_every_answer_and_chance_levels_appear():
    ds = synthetic_vqa_dataset(None, num_samples=400, seed=0, image_size=(56, 112), max_images=3)
    answers = {t: set() for t in QUESTION_TYPES}
    sizes, image_counts = set(), set()
    for i in range(len(ds)):
        sample = ds[i]
        images = [p["content"] for p in sample["messages"][0].content[:-1]]
        answers[sample["question_type"]].add(sample["answer"])
        assert sample["choices"] == list(answer_choices(sample["question_type"], len(images)))
        assert sample["chance"] == pytest.approx(1 / len(sample["choices"]))
        sizes |= {im.size for im in images}
        image_counts.add(len(images))
    assert answers == {
        "color": set(COLORS), "shape": {"circle", "square", "triangle"}, "count": {"1", "2", "3", "4"},
        "position": {"left", "right"}, "which_image": {"first", "second", "third"},
    }
    assert image_counts == {1, 2, 3}
    assert all(w == h and 56 <= w <= 112 for w, h in sizes)


def test_question_types_can_be_restricted_and_bad_options_are_refused():
    ds = synthetic_vqa_dataset(None, num_samples=20, question_types=["color"])
    assert {ds[i]["question_type"] for i in range(20)} == {"color"}
    with pytest.raises(ValueError, match="question_types"):
        synthetic_vqa_dataset(None, question_types=["weather"])
    with pytest.raises(ValueError, match="max_images"):
        synthetic_vqa_dataset(None, max_images=9)


def test_one_cell_board_without_distractors_draws_one_shape_filling_the_picture():
    ds = synthetic_vqa_dataset(
        None, num_samples=40, seed=2, image_size=84, question_types=["color", "shape"], grid=1, max_distractors=0
    )
    for i in range(len(ds)):
        sample = ds[i]
        image_part, question = sample["messages"][0].content
        (scene,) = [decode_scene(image_part["content"], grid=1)]
        assert len(scene) == 1
        assert true_answer(question["content"], [scene]) == sample["answer"]
        # a 3x3 board would leave a shape at most 1/9 of the picture; the smallest here, a triangle of side
        # 0.65 x 84 px, fills about 0.5 x 0.65^2 = 21% of it
        covered = (np.asarray(image_part["content"]) != np.array((235, 235, 235))).any(-1).mean()
        assert covered > 0.19, f"sample {i}: the shape covers only {covered:.0%} of the picture"
        shape, color, _ = scene[0]
        assert sample["description"] == f"84x84 px: {'an' if color == 'orange' else 'a'} {color} {shape}"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"grid": 1, "question_types": ["position"]}, "grid >= 3"),
        ({"grid": 2, "question_types": ["count"]}, "count questions"),
        ({"grid": 1, "question_types": ["color"], "max_distractors": 1}, "color questions"),
        ({"max_distractors": 3}, "max_distractors"),
    ],
)
def test_layouts_too_small_for_the_questions_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        synthetic_vqa_dataset(None, **options)


def test_pictures_vary_in_size_place_and_shade_so_that_none_repeats():
    ds = synthetic_vqa_dataset(None, num_samples=60, seed=4, image_size=56, question_types=["color"], grid=1,
                               max_distractors=0)  # fmt: skip
    images = [ds[i]["messages"][0].content[0]["content"].tobytes() for i in range(len(ds))]
    # 60 samples of at most 3 shapes x 6 colors: drawn the same way each time, most pictures would repeat
    assert len(set(images)) == len(images)


def test_the_default_run_never_trains_on_a_held_out_picture():
    """configs/tiny_synthetic.yaml: no picture of its held-out set is one of its training pictures."""
    cfg = OmegaConf.load(REPO / "configs" / "tiny_synthetic.yaml")

    def pictures(section: str) -> set[bytes]:
        options = {k: v for k, v in OmegaConf.to_container(cfg[section]).items() if k != "_component_"}
        assert cfg[section]._component_ == "qwenvl_data.datasets.synthetic_vqa_dataset"
        records = SyntheticVQASource(**options)  # the records the dataset transforms, pictures included
        return {
            hashlib.sha256(part["image"].tobytes()).digest()
            for i in range(len(records)) for part in records[i]["messages"][0]["content"][:-1]
        }  # fmt: skip

    held_out = pictures("eval_dataset")
    assert len(held_out) == cfg.eval_dataset.num_samples >= 256  # every held-out picture differs from the others
    assert not held_out & pictures("dataset")
