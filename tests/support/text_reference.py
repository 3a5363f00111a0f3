"""transformers as the reference for the text side: tokenizer, chat template, pad expansion.

The reference tokenizer is transformers' Qwen2Tokenizer built from the same vocab.json/merges.txt plus
the Qwen2.5-VL added tokens; conversations are rendered by transformers' ``apply_chat_template`` with the
official template (jinja), and every ``<|image_pad|>``/``<|video_pad|>`` is expanded the way the
Qwen2.5-VL processor does, with grids from transformers' own image processor and smart_resize.
"""

import functools
import json
import math

from support.image_reference import reference_image
from tokenizers import AddedToken
from transformers import Qwen2Tokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from qwenvl_data._constants import (
    MERGE_SIZE,
    NON_SPECIAL_ADDED_TOKENS,
    PATCH_SIZE,
    SPECIAL_TOKENS,
    TEMPORAL_PATCH_SIZE,
    VIDEO_MAX_PIXELS,
    VIDEO_MIN_PIXELS,
)


@functools.cache
def hf_tokenizer(vocab_json: str, merges_txt: str) -> Qwen2Tokenizer:
    """transformers' Qwen2 tokenizer from the files, with the 22 Qwen2.5-VL tokens added in id order."""
    with open(vocab_json, encoding="utf-8") as f:
        vocab = json.load(f)
    with open(merges_txt, encoding="utf-8") as f:
        merges = [tuple(line.split(" ")) for line in f.read().split("\n")[1:] if line]
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges)  # adds <|endoftext|> itself
    tokenizer.add_tokens(
        [
            AddedToken(token, special=token not in NON_SPECIAL_ADDED_TOKENS, normalized=False)
            for token in SPECIAL_TOKENS
            if token != "<|endoftext|>"
        ]
    )
    return tokenizer


def image_tokens(image, image_processor=None) -> int:
    """Pad tokens transformers' Qwen2-VL image processor (``image_processor``, else one with the default
    budgets) gives one PIL image."""
    if image_processor is None:
        _, grid = reference_image(image)
    else:
        grid = image_processor(images=image, return_tensors="pt")["image_grid_thw"]
    return int(grid.prod()) // MERGE_SIZE**2


def video_tokens(frames) -> int:
    """Pad tokens of a clip by the reference rule (transformers' smart_resize on the video pixel budget)."""
    width, height = frames[0].size
    h, w = smart_resize(height, width, PATCH_SIZE * MERGE_SIZE, VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS)
    t = math.ceil(len(frames) / TEMPORAL_PATCH_SIZE)
    return t * (h // PATCH_SIZE) * (w // PATCH_SIZE) // MERGE_SIZE**2


def _media_in_order(messages: list[dict], kind: str) -> list:
    return [part[kind] for m in messages if not isinstance(m["content"], str) for part in m["content"]
            if isinstance(part, dict) and part.get("type") == kind]


def reference_ids(
    tokenizer: Qwen2Tokenizer, chat_template: str, messages: list[dict], image_processor=None, **template_kwargs
) -> list[int]:
    """Token ids of an HF-style conversation: jinja template, pads expanded (image grids by ``image_processor``,
    else by one with the default budgets), tokenized by transformers."""
    text = tokenizer.apply_chat_template(messages, chat_template=chat_template, tokenize=False, **template_kwargs)
    counts_of = {"image": functools.partial(image_tokens, image_processor=image_processor), "video": video_tokens}
    for kind, count in counts_of.items():
        pad = f"<|{kind}_pad|>"
        pieces = text.split(pad)
        counts = [count(media) for media in _media_in_order(messages, kind)]
        assert len(pieces) == len(counts) + 1, "reference: pads and media disagree"
        text = pieces[0] + "".join(pad * n + piece for n, piece in zip(counts, pieces[1:]))
    return tokenizer.encode(text, add_special_tokens=False)
