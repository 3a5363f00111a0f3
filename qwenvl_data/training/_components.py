"""Builders the configs name as `_component_` when a piece needs a default that YAML cannot spell."""

from typing import Any

from qwenvl_data.models._processor_files import checkpoint_transform
from qwenvl_data.transform import Qwen2_5_VLTransform
from qwenvl_data.vocab import qwen_vocab_files


def packaged_vocab_transform(**transform_kwargs: Any) -> Qwen2_5_VLTransform:
    """Qwen2_5_VLTransform on the Qwen vocabulary shipped by `qwenvl_data[vocab]` (no checkpoint, no download).

    Configs that start from a checkpoint name `qwenvl_data.training.checkpoint_transform` instead (the
    checkpoint's own tokenizer.json and preprocessor configs).

    Args:
        **transform_kwargs: the other Qwen2_5_VLTransform arguments (max_seq_len, min_pixels, max_pixels, ...).
    """
    vocab, merges = qwen_vocab_files()
    return Qwen2_5_VLTransform(vocab, merges, **transform_kwargs)


__all__ = ["checkpoint_transform", "packaged_vocab_transform"]
