"""Hand-built Qwen2.5-VL samples with the token layout the chat template and text transform produce.

Used by the collate, rope and packing tests and by bench/collate.py. Each sample is what
``Qwen2_5_VLTransform`` returns for a one-turn conversation: system prompt, a user turn with
its images/videos first (``<|vision_start|>``, t*h*w/4 pad tokens, ``<|vision_end|>``) and then
the question, and an assistant answer whose tokens and closing ``<|im_end|>`` are the only
trained labels. Text ids are drawn from the real base vocabulary; pixels are random floats of
the real patch size.

A media item is ``("image", h, w)`` or ``("video", t, h, w, second_per_grid_t)`` with the grid in
patches before the 2x2 merge (an image of 448x448 pixels is ``("image", 32, 32)``).
"""

import functools
import math

import torch
from support.models_reference import mm_token_type_ids

from qwenvl_data._constants import (
    BASE_VOCAB_SIZE,
    IGNORE_INDEX,
    IM_END_ID,
    IM_START_ID,
    IMAGE_PAD_ID,
    MERGE_SIZE,
    TOKENS_PER_SECOND,
    VIDEO_PAD_ID,
    VISION_END_ID,
    VISION_START_ID,
)
from qwenvl_data.models import MODEL_FAMILIES

NEWLINE_ID = 198  # "\n" (byte-level "Ċ") in Qwen's vocabulary
ROLE_IDS = {"system": 8948, "user": 872, "assistant": 77091}  # "system", "user", "assistant"


def _text(generator: torch.Generator, length: int) -> list[int]:
    return torch.randint(0, BASE_VOCAB_SIZE, (length,), generator=generator).tolist()


def _turn_open(role: str) -> list[int]:
    return [IM_START_ID, ROLE_IDS[role], NEWLINE_ID]


def vl_sample(
    media: tuple = (),
    *,
    question_len: int = 12,
    answer_len: int = 8,
    seed: int = 0,
    sample_id: str | None = None,
    family: str = "qwen2_5_vl",
) -> dict:
    """One tokenized sample in the text transform's output format (see module docstring).

    ``family`` (a ``model_type``) sets the patch width of the pixels (Qwen3-VL: 1536 values) and, for Qwen3-VL,
    the video layout: each temporal patch is 3 timestamp text tokens and its own ``<|vision_start|>`` ... span, one
    ``video_grid_thw`` row per video (``second_per_grid_ts`` stays, as the transform gives it; its positions do not
    use it)."""
    described = MODEL_FAMILIES[family]
    patch_dim = 3 * described.temporal_patch_size * described.patch_size**2
    frames_apart = described.position_rule.frames_apart
    generator = torch.Generator().manual_seed(seed)
    prompt = _turn_open("system") + _text(generator, 6) + [IM_END_ID, NEWLINE_ID] + _turn_open("user")
    grids = {"image": [], "video": []}
    seconds = []
    for item in media:
        kind, *grid = item
        if kind == "video":
            seconds.append(grid.pop())
        else:
            grid = [1, *grid]
        pad = IMAGE_PAD_ID if kind == "image" else VIDEO_PAD_ID
        if kind == "video" and frames_apart:
            for _ in range(grid[0]):
                prompt += _text(generator, 3) + [VISION_START_ID] + [pad] * (grid[1] * grid[2] // MERGE_SIZE**2)
                prompt += [VISION_END_ID]
        else:
            num_tokens = grid[0] * grid[1] * grid[2] // MERGE_SIZE**2
            prompt += [VISION_START_ID] + [pad] * num_tokens + [VISION_END_ID]
        grids[kind].append(grid)
    prompt += _text(generator, question_len) + [IM_END_ID, NEWLINE_ID] + _turn_open("assistant")
    answer = _text(generator, answer_len) + [IM_END_ID]
    tokens = prompt + answer + [NEWLINE_ID]
    labels = [IGNORE_INDEX] * len(prompt) + answer + [IGNORE_INDEX]
    sample = {"tokens": tokens, "labels": labels, "mask": [label == IGNORE_INDEX for label in labels]}
    if sample_id is not None:
        sample["id"] = sample_id
    for kind, pixel_key in (("image", "pixel_values"), ("video", "pixel_values_videos")):
        if grids[kind]:
            grid = torch.tensor(grids[kind], dtype=torch.long)
            sample[pixel_key] = torch.randn(int(grid.prod(1).sum()), patch_dim, generator=generator)
            sample[f"{kind}_grid_thw"] = grid
    if seconds:
        sample["second_per_grid_ts"] = torch.tensor(seconds, dtype=torch.float32)
    return sample


def vl_prompt(media: tuple = (), *, question_len: int = 12, seed: int = 0, family: str = "qwen2_5_vl") -> dict:
    """``vl_sample`` cut before the answer: what ``Qwen2_5_VLTransform(..., inference=True)`` returns, no labels."""
    sample = vl_sample(media, question_len=question_len, seed=seed, family=family)
    prompt_len = next(i for i, label in enumerate(sample["labels"]) if label != IGNORE_INDEX)
    skipped = ("tokens", "labels", "mask")
    return {"tokens": sample["tokens"][:prompt_len], **{k: v for k, v in sample.items() if k not in skipped}}


@functools.cache
def _hf_model(model_type: str):
    """A family's tiny transformers model (``Qwen2_5_VLModel``, ``Qwen2VLModel``): only its get_rope_index is used."""
    from support.families import FAMILIES

    family = FAMILIES[model_type]
    return family.hf_class(family.hf_config()).model.eval()


def hf_rope_index(
    input_ids: torch.Tensor,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    second_per_grid_ts: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    model_type: str = "qwen2_5_vl",
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers 5.x ``get_rope_index`` of a family's model (``Qwen2_5_VLModel``'s unless ``model_type`` names
    another) on a batch: (position_ids [3, B, L], deltas [B, 1])."""
    return _hf_model(model_type).get_rope_index(
        input_ids,
        mm_token_type_ids(input_ids),
        image_grid_thw=image_grid_thw,
        video_grid_thw=video_grid_thw,
        second_per_grid_ts=second_per_grid_ts,
        attention_mask=attention_mask,
    )


def rule_position_ids(tokens: list[int], grids: list[list[int]], seconds: list[float]) -> list[list[int]]:
    """The MRoPE rule of design.md, token by token (slow; the reference where transformers 5.x differs).

    Args:
        tokens: one unpadded row.
        grids: (t, h, w) of the row's images and videos in order of appearance.
        seconds: seconds per temporal patch for each entry of ``grids`` (0 for images).

    Returns:
        [3][len(tokens)] positions.
    """
    positions: list[list[int]] = [[], [], []]
    next_position = 0
    i = item = 0
    while i < len(tokens):
        if tokens[i] not in (IMAGE_PAD_ID, VIDEO_PAD_ID):
            for axis in positions:
                axis.append(next_position)
            next_position += 1
            i += 1
            continue
        t, h, w = grids[item]
        step = seconds[item] * TOKENS_PER_SECOND
        largest = next_position - 1
        for frame in range(t):
            for row in range(h // MERGE_SIZE):
                for col in range(w // MERGE_SIZE):
                    ids = (next_position + math.floor(frame * step), next_position + row, next_position + col)
                    for axis, value in zip(positions, ids):
                        axis.append(value)
                    largest = max(largest, *ids)
        i += t * h * w // MERGE_SIZE**2
        item += 1
        next_position = largest + 1
    return positions
