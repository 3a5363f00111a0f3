"""LoRA specifics: which parameters train, and how the adapter is written on its own (PEFT's format)."""

from pathlib import Path

import torch
from torch import nn
from torchtune.modules.peft import get_adapter_params, set_trainable_params

from qwenvl_data.models import peft_adapter_config, write_peft_adapter
from qwenvl_data.training._checkpoint import atomic_directory, naming_failed_writes


def train_adapters_only(model: nn.Module) -> None:
    """Freeze everything except the LoRA adapters and the modules the builder marked trainable.

    Raises:
        ValueError: (before any training) when the adapter could not be written in PEFT's format.
    """
    peft_adapter_config(model, trained_modules=getattr(model, "trainable_modules", ()))
    set_trainable_params(model, get_adapter_params(model))


def has_adapters(model: nn.Module) -> bool:
    """Whether any module carries LoRA/DoRA adapter weights (``lora_a``), whatever builder made it."""
    return any(hasattr(module, "lora_a") for module in model.modules())


def trained_full_modules(model: nn.Module) -> list[str]:
    """The builder's fully trained modules (``trainable_modules``) that still train after the freeze options."""
    return [
        name
        for name in getattr(model, "trainable_modules", ())
        if any(p.requires_grad for p in model.get_submodule(name).parameters())
    ]


def save_adapter(
    model: nn.Module, full_state_dict: dict[str, torch.Tensor], out_dir: Path, *, base_model: str | None
) -> Path:
    """Write the adapter of a LoRA run as a PEFT adapter directory, atomically.

    ``peft.PeftModel.from_pretrained(Qwen2_5_VLForConditionalGeneration.from_pretrained(base), out_dir)``
    computes what the trained model computes; the merger (or vision tower) when trained goes in
    ``modules_to_save``.

    Args:
        model: the trained LoRA model (sharded or not).
        full_state_dict: its unsharded weights.
        out_dir: the adapter directory to (re)write.
        base_model: the HF directory the adapter applies to, recorded as ``base_model_name_or_path``.

    Returns:
        out_dir, holding adapter_model.safetensors and adapter_config.json.
    """
    trained = set(get_adapter_params(model))
    needed = sum(t.numel() * t.element_size() for name, t in full_state_dict.items() if name in trained)
    with atomic_directory(out_dir) as partial, naming_failed_writes(partial, needed):
        write_peft_adapter(
            model, full_state_dict, partial, trained_modules=trained_full_modules(model), base_model=base_model
        )
    return out_dir
