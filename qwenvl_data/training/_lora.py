"""LoRA specifics: which parameters train, and how the adapter is written on its own."""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from torchtune.modules.peft import get_adapter_params, set_trainable_params

from qwenvl_data.training._checkpoint import atomic_directory, naming_failed_writes


def train_adapters_only(model: nn.Module) -> None:
    """Freeze everything except the LoRA adapters and the modules the builder marked trainable."""
    set_trainable_params(model, get_adapter_params(model))


def adapter_names(model: nn.Module) -> list[str]:
    """Parameter names LoRA trains: the adapters and any module trained in full next to them (the merger)."""
    return sorted(get_adapter_params(model))


def save_adapter(
    full_state_dict: dict[str, torch.Tensor],
    names: list[str],
    out_dir: Path,
    *,
    lora_rank: int,
    lora_alpha: float,
    base_model: str | None,
) -> Path:
    """Write the trained weights of a LoRA run (our module names) and their settings, atomically.

    Args:
        full_state_dict: the unsharded model weights.
        names: which of them the run trained (`adapter_names`).
        base_model: the HF directory the adapter applies to, recorded for the reader.

    Returns:
        out_dir, holding adapter_model.safetensors and adapter_config.json.
    """
    adapter = {name: full_state_dict[name].contiguous() for name in names}
    settings = {"r": lora_rank, "lora_alpha": lora_alpha, "base_model": base_model, "key_naming": "qwenvl_data"}
    needed = sum(t.numel() * t.element_size() for t in adapter.values())
    with atomic_directory(out_dir) as partial, naming_failed_writes(partial, needed):
        save_file(adapter, str(partial / "adapter_model.safetensors"))
        (partial / "adapter_config.json").write_text(json.dumps(settings, indent=2))
    return out_dir
