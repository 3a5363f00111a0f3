"""Tiny random transformers Qwen2.5-VL and Qwen2-VL models (the reference), shared by the model tests and
bench/model.py."""

import inspect
from pathlib import Path

import torch
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)

from qwenvl_data._constants import IMAGE_PAD_ID, PAD_ID, TOKENS_PER_SECOND, VIDEO_PAD_ID, VOCAB_SIZE


# The language model of both tiny references: head_dim 32 (MRoPE 4/6/6).
_TINY_TEXT = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]},
)


def tiny_hf_config(
    *, tie_word_embeddings: bool = True, vision_depth: int = 2, vision_width: int = 64, **text: object
) -> Qwen2_5_VLConfig:
    """Same shapes as ``qwen2_5_vl_tiny``: head_dim 32 (MRoPE 4/6/6), vision head_dim 16, window 112, the last
    vision block full attention. ``vision_width`` (MLP twice as wide) and ``text`` (``text_config`` keys, e.g.
    ``hidden_size``) change the sizes, as bench/model.py does."""
    text_config = {**_TINY_TEXT, **text}
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=dict(
            depth=vision_depth,
            hidden_size=vision_width,
            intermediate_size=2 * vision_width,
            num_heads=4,
            out_hidden_size=text_config["hidden_size"],
            fullatt_block_indexes=[vision_depth - 1],
            window_size=112,
            tokens_per_second=TOKENS_PER_SECOND,
        ),
        tie_word_embeddings=tie_word_embeddings,
    )


def save_random_hf_model(out_dir: Path, *, seed: int = 0, **config_args: object) -> Qwen2_5_VLForConditionalGeneration:
    """A random tiny HF model, saved with ``save_pretrained`` into ``out_dir`` and returned in eval mode."""
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(tiny_hf_config(**config_args)).eval()
    model.save_pretrained(out_dir)
    return model


def tiny_qwen2_vl_hf_config(
    *, tie_word_embeddings: bool = True, vision_depth: int = 2, vision_width: int = 64, **text: object
) -> Qwen2VLConfig:
    """Same shapes as ``qwen2_vl_tiny``: the tiny language model, a 2-block tower (hidden 64, 4 heads, MLP ratio 2);
    ``vision_depth``, ``vision_width`` and ``text`` change the sizes as in ``tiny_hf_config``."""
    text_config = {**_TINY_TEXT, **text}
    return Qwen2VLConfig(
        text_config=text_config,
        vision_config=dict(
            depth=vision_depth, embed_dim=vision_width, hidden_size=text_config["hidden_size"], mlp_ratio=2, num_heads=4
        ),
        tie_word_embeddings=tie_word_embeddings,
    )


def save_random_qwen2_vl_hf_model(
    out_dir: Path, *, seed: int = 0, **config_args: object
) -> Qwen2VLForConditionalGeneration:
    """A random tiny HF Qwen2-VL, saved with ``save_pretrained`` (transformers 5.x nested layout) and returned
    in eval mode. Its LayerNorm weights and biases are randomized too (transformers initializes them to 1
    and 0), so a swapped or dropped norm parameter changes the logits."""
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(tiny_qwen2_vl_hf_config(**config_args)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "visual" in name and param.dim() == 1 and ("norm" in name or "ln_q" in name):
                param.add_(torch.randn_like(param) * 0.5)
    model.save_pretrained(out_dir)
    return model


def hf_forward(model: Qwen2_5_VLForConditionalGeneration, batch: dict, **extra: object):
    """Run the HF model on a batch from our collator (same position ids, int attention mask); only the media keys
    its ``forward`` takes (Qwen2-VL and Qwen3-VL have no ``second_per_grid_ts``)."""
    keys = _media_keys(model)
    return model(
        input_ids=batch["tokens"],
        attention_mask=batch["attention_mask"].long(),
        position_ids=batch["position_ids"],
        **{k: batch[k] for k in keys if k in batch},
        **extra,
    )


def _media_keys(model: torch.nn.Module) -> list[str]:
    """The collator's media keys that ``model.forward`` names (a PEFT wrapper: its base model's)."""
    forward = getattr(model, "get_base_model", lambda: model)().forward
    taken = inspect.signature(forward).parameters
    return [k for k in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw",
                        "second_per_grid_ts") if k in taken]  # fmt: skip


def mm_token_type_ids(tokens: torch.Tensor) -> torch.Tensor:
    """transformers' modality ids: 1 on image pads, 2 on video pads, 0 elsewhere."""
    return (tokens == IMAGE_PAD_ID).int() + 2 * (tokens == VIDEO_PAD_ID).int()


def hf_generate(
    model: Qwen2_5_VLForConditionalGeneration,
    batch: dict,
    max_new_tokens: int,
    *,
    eos_token_id: int | None = None,
    pad_token_id: int = PAD_ID,
) -> torch.Tensor:
    """transformers' greedy ``generate`` on left-padded prompts from our collator; returns the new ids [B, T].

    transformers computes its own MRoPE ids from the tokens (``mm_token_type_ids`` marks the vision
    pads); ``eos_token_id=None`` generates all ``max_new_tokens`` (the model's default stop ids are off).
    Only the media keys the model's ``forward`` takes are given (Qwen2-VL has no ``second_per_grid_ts``).
    """
    keys = _media_keys(model)
    with torch.no_grad():
        out = model.generate(
            input_ids=batch["tokens"],
            attention_mask=batch["attention_mask"].long(),
            mm_token_type_ids=mm_token_type_ids(batch["tokens"]),
            **{k: batch[k] for k in keys if k in batch},
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        )
    return out[:, batch["tokens"].shape[1] :]
