"""LoRA specifics: which parameters train, and how adapters and merged weights are written."""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from torchtune.modules.peft import get_adapter_params, get_merged_lora_ckpt, set_trainable_params

from qwenvl_data.training._checkpoint import _is_adapter_key, _publish_dir


def train_adapters_only(model: nn.Module) -> None:
    """Freeze everything except the LoRA adapters and the modules the builder marked trainable."""
    set_trainable_params(model, get_adapter_params(model))


def save_adapter(
    full_state_dict: dict[str, torch.Tensor], out_dir: Path, *, lora_rank: int, lora_alpha: float, base_model: str | None
) -> Path:
    """Write the adapter weights (our module names) and their settings, atomically.

    Args:
        full_state_dict: the unsharded model weights; only the LoRA keys are kept.
        base_model: the HF directory the adapter applies to, recorded for the reader.

    Returns:
        out_dir, holding adapter_model.safetensors and adapter_config.json.
    """
    adapter = {k: v.contiguous() for k, v in full_state_dict.items() if _is_adapter_key(k)}
    partial = out_dir.with_name(out_dir.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    save_file(adapter, str(partial / "adapter_model.safetensors"))
    settings = {"r": lora_rank, "lora_alpha": lora_alpha, "base_model": base_model, "key_naming": "qwenvl_data"}
    (partial / "adapter_config.json").write_text(json.dumps(settings, indent=2))
    _publish_dir(partial, out_dir)
    return out_dir


def merge_adapters(full_state_dict: dict[str, torch.Tensor], *, lora_rank: int, lora_alpha: float) -> dict[str, torch.Tensor]:
    """Fold each adapter into its base weight (W + alpha/rank * B @ A): a plain model's state dict."""
    return get_merged_lora_ckpt(dict(full_state_dict), rank=lora_rank, alpha=lora_alpha)
