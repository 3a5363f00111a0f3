"""Qwen3-VL's component builders: placeholders on this branch (the model is built on branch ``q3model``).

The processing side (``_families.QWEN3_VL``) needs these names to exist; the lead replaces this module with
q3model's at merge.
"""

from typing import Any

_PENDING = "Qwen3-VL model: being built on branch q3model"


def qwen3_vl(**kwargs: Any) -> Any:
    """Placeholder. Raises NotImplementedError."""
    raise NotImplementedError(_PENDING)


def lora_qwen3_vl(**kwargs: Any) -> Any:
    """Placeholder. Raises NotImplementedError."""
    raise NotImplementedError(_PENDING)
