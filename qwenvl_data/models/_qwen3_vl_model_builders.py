"""Qwen3-VL sizes: placeholders on this branch (the model is built on branch ``q3model``; the lead replaces this
module with q3model's at merge)."""

from typing import Any

_PENDING = "Qwen3-VL model: being built on branch q3model"


def qwen3_vl_2b() -> Any:
    """Placeholder. Raises NotImplementedError."""
    raise NotImplementedError(_PENDING)


def qwen3_vl_4b() -> Any:
    """Placeholder. Raises NotImplementedError."""
    raise NotImplementedError(_PENDING)


def qwen3_vl_8b() -> Any:
    """Placeholder. Raises NotImplementedError."""
    raise NotImplementedError(_PENDING)


def qwen3_vl_32b() -> Any:
    """Placeholder. Raises NotImplementedError."""
    raise NotImplementedError(_PENDING)
