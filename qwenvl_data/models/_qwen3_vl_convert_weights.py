"""Qwen3-VL checkpoint conversion: placeholders on this branch (the model is built on branch ``q3model``; the lead
replaces this module with q3model's at merge)."""

from typing import Any

_PENDING = "Qwen3-VL model: being built on branch q3model"

QWEN3_VL_KEY_MAP: dict[str, str] = {}


def qwen3_vl_builder_args_from_hf_config(config: dict) -> dict:
    """Placeholder. Raises NotImplementedError."""
    raise NotImplementedError(_PENDING)


def qwen3_vl_hf_config_from_model(model: Any, dtype: Any) -> dict:
    """Placeholder. Raises NotImplementedError."""
    raise NotImplementedError(_PENDING)
