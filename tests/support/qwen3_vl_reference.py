"""A tiny random transformers Qwen3-VL (the reference) and batches in Qwen3-VL's token layout, for the model tests
and bench/model.py.

Samples follow Qwen3-VL's chat layout: an image is ``<|vision_start|>`` + h*w/4 ``<|image_pad|>`` +
``<|vision_end|>``; a video is, per temporal patch, a few timestamp text tokens and then the same three
parts with ``<|video_pad|>`` (transformers' processor writes ``<0.5 seconds>`` there). Pixels are random
1536-value patch rows (3 channels x 2 frames x 16 x 16). Position ids come from transformers'
``Qwen3VLModel.get_rope_index`` on the padded batch.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from support.models_reference import mm_token_type_ids
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

from qwenvl_data._constants import (
    BASE_VOCAB_SIZE,
    IGNORE_INDEX,
    IM_END_ID,
    IMAGE_PAD_ID,
    MERGE_SIZE,
    PAD_ID,
    VIDEO_PAD_ID,
    VISION_END_ID,
    VISION_START_ID,
    VOCAB_SIZE,
)

PATCH_VALUES = 3 * 2 * 16 * 16  # 1536


_TINY_TEXT = dict(
    vocab_size=VOCAB_SIZE, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=48, rms_norm_eps=1e-6, max_position_embeddings=32768,
    rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [10, 7, 7], "mrope_interleaved": True},
)  # fmt: skip


def tiny_qwen3_vl_hf_config(
    *, tie_word_embeddings: bool = True, vision_depth: int = 3, vision_width: int = 64, **text: object
) -> Qwen3VLConfig:
    """Same shapes as ``qwen3_vl_tiny``: head_dim 48 (interleaved MRoPE 10/7/7), a 3-block tower with DeepStack
    after blocks 0 and 1 and an 8 x 8 position table. ``vision_depth``, ``vision_width`` (MLP twice as wide) and
    ``text`` (``text_config`` keys, e.g. ``hidden_size``) change the sizes, as bench/model.py does."""
    text_config = {**_TINY_TEXT, **text}
    return Qwen3VLConfig(
        text_config=text_config,
        vision_config=dict(
            depth=vision_depth, hidden_size=vision_width, intermediate_size=2 * vision_width, num_heads=4,
            out_hidden_size=text_config["hidden_size"], num_position_embeddings=64, deepstack_visual_indexes=[0, 1],
        ),
        tie_word_embeddings=tie_word_embeddings,
    )  # fmt: skip


def save_random_qwen3_vl_hf_model(out_dir: Path, *, seed: int = 0, **config_args: object) -> Qwen3VLForConditionalGeneration:
    """A random tiny HF Qwen3-VL saved with ``save_pretrained`` into ``out_dir``, returned in eval mode
    (``config_args``: those of ``tiny_qwen3_vl_hf_config``).

    transformers starts norms at 1 and biases at 0; every 1-D parameter (norm scales, LayerNorm and linear
    biases) gets noise here, and the weights a larger scale, so that a swapped, dropped or misplaced
    parameter (q_norm before or after RoPE, a DeepStack merger's norm) changes the logits far beyond the
    tolerance."""
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(tiny_qwen3_vl_hf_config(**config_args)).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(torch.randn_like(param) * 0.5)
            else:
                param.mul_(4.0)
    model.save_pretrained(out_dir)
    return model


def qwen3_vl_sample(media: tuple = (), *, text_len: int = 6, answer_len: int = 4, seed: int = 0) -> dict:
    """One sample: text, then each media item in Qwen3-VL's layout, then text and a trained answer.

    Args:
        media: items ``("image", h, w)`` or ``("video", t, h, w)``, grids in patches before the 2x2 merge.
        text_len, answer_len: random text tokens before/after the media and of the answer.
        seed: for the text ids and pixels.

    Returns:
        dict with ``tokens``, ``labels`` (lists) and, per modality present, ``pixel_values`` /
        ``image_grid_thw`` or ``pixel_values_videos`` / ``video_grid_thw`` (one [t, h, w] row per video).
    """
    generator = torch.Generator().manual_seed(seed)

    def text(length: int) -> list[int]:
        return torch.randint(0, BASE_VOCAB_SIZE, (length,), generator=generator).tolist()

    tokens = text(text_len)
    grids = {"image": [], "video": []}
    for kind, *grid in media:
        grid = [1, *grid] if kind == "image" else grid
        t, h, w = grid
        pads = [IMAGE_PAD_ID if kind == "image" else VIDEO_PAD_ID] * (h * w // MERGE_SIZE**2)
        for _ in range(t if kind == "video" else 1):
            stamp = text(3) if kind == "video" else []
            tokens += stamp + [VISION_START_ID] + pads + [VISION_END_ID]
        grids[kind].append(grid)
    prompt = tokens + text(text_len)
    answer = text(answer_len) + [IM_END_ID]
    sample = {"tokens": prompt + answer, "labels": [IGNORE_INDEX] * len(prompt) + answer}
    for kind, pixel_key in (("image", "pixel_values"), ("video", "pixel_values_videos")):
        if grids[kind]:
            grid = torch.tensor(grids[kind], dtype=torch.long)
            sample[pixel_key] = torch.randn(int(grid.prod(1).sum()), PATCH_VALUES, generator=generator)
            sample[f"{kind}_grid_thw"] = grid
    return sample


def qwen3_vl_batch(
    samples: list[dict], reference: Qwen3VLForConditionalGeneration, padding_side: str = "right"
) -> dict:
    """The collator's keys for ``samples``, padded on ``padding_side``, with transformers' position ids.

    Returns:
        ``tokens`` [B, L], ``labels`` [B, L], ``attention_mask`` bool [B, L], ``position_ids`` [3, B, L],
        ``rope_deltas`` [B, 1] and the pixel/grid keys concatenated in batch order.
    """
    length = max(len(s["tokens"]) for s in samples)

    def pad(values: list[int], fill: int) -> torch.Tensor:
        padding = (length - len(values), 0) if padding_side == "left" else (0, length - len(values))
        return F.pad(torch.tensor(values), padding, value=fill)

    batch = {
        "tokens": torch.stack([pad(s["tokens"], PAD_ID) for s in samples]),
        "labels": torch.stack([pad(s["labels"], IGNORE_INDEX) for s in samples]),
        "attention_mask": torch.stack([pad([1] * len(s["tokens"]), 0) for s in samples]).bool(),
    }
    for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"):
        present = [s[key] for s in samples if key in s]
        if present:
            batch[key] = torch.cat(present)
    batch["position_ids"], batch["rope_deltas"] = reference.model.get_rope_index(
        batch["tokens"],
        mm_token_type_ids(batch["tokens"]),
        image_grid_thw=batch.get("image_grid_thw"),
        video_grid_thw=batch.get("video_grid_thw"),
        attention_mask=batch["attention_mask"].long(),
    )
    return batch


def qwen3_vl_hf_forward(model: Qwen3VLForConditionalGeneration, batch: dict, **extra: object):
    """transformers' forward on a batch of ``qwen3_vl_batch`` (same position ids, int attention mask)."""
    keys = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")
    return model(
        input_ids=batch["tokens"],
        attention_mask=batch["attention_mask"].long(),
        position_ids=batch["position_ids"],
        **{k: batch[k] for k in keys if k in batch},
        **extra,
    )
