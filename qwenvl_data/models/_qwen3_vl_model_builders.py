"""Qwen3-VL sizes: placeholders on this branch (the model is built on branch ``q3model``; the lead replaces this
module with q3model's at merge). The names are the ones ``_checkpoint_builder`` reads for every family: a numbers
dict ``QWEN3_VL_{SIZE}`` and the builders ``qwen3_vl_{size}`` / ``lora_qwen3_vl_{size}`` per size and ``tiny``;
the numbers are unknown here (None)."""

from typing import Any

_PENDING = "Qwen3-VL model: being built on branch q3model"
_UNKNOWN_SHAPES = dict.fromkeys((
    "vocab_size", "num_layers", "num_heads", "num_kv_heads", "embed_dim", "intermediate_dim", "tie_word_embeddings",
    "vision_depth", "vision_embed_dim", "vision_num_heads", "vision_intermediate_dim",
))  # fmt: skip
QWEN3_VL_2B = QWEN3_VL_4B = QWEN3_VL_8B = QWEN3_VL_32B = QWEN3_VL_TINY = _UNKNOWN_SHAPES


def _pending(*args: Any, **kwargs: Any) -> Any:
    """Placeholder builder. Raises NotImplementedError."""
    raise NotImplementedError(_PENDING)


qwen3_vl_2b = qwen3_vl_4b = qwen3_vl_8b = qwen3_vl_32b = qwen3_vl_tiny = _pending
lora_qwen3_vl_2b = lora_qwen3_vl_4b = lora_qwen3_vl_8b = lora_qwen3_vl_32b = lora_qwen3_vl_tiny = _pending
