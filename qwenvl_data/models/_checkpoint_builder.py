"""The model size a checkpoint's ``config.json`` describes: the builder configs name to take it from there, and
the check that a builder named for one size is not run on a checkpoint of another."""

import importlib
import os
from collections.abc import Callable
from pathlib import Path

from qwenvl_data._files import read_json
from qwenvl_data.models import _model_builders as sizes
from qwenvl_data.models._convert_weights import builder_args_from_hf_config
from qwenvl_data.models._model import Qwen2_5_VLModel

# What decides the weights' shapes (a checkpoint of other values cannot be loaded into the model).
_SHAPE_KEYS = (
    "vocab_size", "num_layers", "num_heads", "num_kv_heads", "embed_dim", "intermediate_dim", "tie_word_embeddings",
    "vision_depth", "vision_embed_dim", "vision_num_heads", "vision_intermediate_dim",
)  # fmt: skip


def _shapes(numbers: dict) -> dict:
    """The ``_SHAPE_KEYS`` of builder arguments (a builder without ``tie_word_embeddings`` does not tie)."""
    return {key: numbers.get(key, False) if key == "tie_word_embeddings" else numbers[key] for key in _SHAPE_KEYS}


# Sized builders -> the shapes they build; other builders (your own, or from_checkpoint) are not judged here.
_SIZED_BUILDERS: dict[Callable, dict] = {
    getattr(sizes, f"{prefix}qwen2_5_vl_{size}"): _shapes(getattr(sizes, f"QWEN2_5_VL_{size.upper()}"))
    for prefix in ("", "lora_") for size in ("3b", "7b", "32b", "72b", "tiny")
}  # fmt: skip


def qwen2_5_vl_from_checkpoint(model_dir: str | os.PathLike, **lora_args: object) -> Qwen2_5_VLModel:
    """Builder (YAML ``_component_``) of the model ``model_dir/config.json`` describes, randomly initialized;
    the recipe's checkpointer loads the weights.

    Args:
        model_dir: an HF checkpoint directory (``config.json``).
        **lora_args: the arguments of ``lora_qwen2_5_vl`` (``lora_attn_modules``, ``lora_rank``, ...) for
            the LoRA variant; none for the plain model.

    Returns:
        Qwen2_5_VLModel.
    """
    return sizes.qwen2_5_vl_from_hf_config(read_json(Path(model_dir) / "config.json"), **lora_args)


def check_builder_fits_checkpoint(component: str, model_dir: str | os.PathLike | None) -> None:
    """Refuse a sized builder (``model._component_``) whose size is not the one ``model_dir/config.json`` describes,
    before anything is built. Builders of no fixed size (``qwen2_5_vl_from_checkpoint``, your own) pass.

    Raises:
        ValueError: naming the builder, the checkpoint, the shapes that differ and the builder that fits.
    """
    module, _, name = component.rpartition(".")
    builder = getattr(importlib.import_module(module), name, None) if module else None
    wanted = _SIZED_BUILDERS.get(builder)
    if model_dir is None or wanted is None:
        return
    config_file = Path(model_dir) / "config.json"
    found = _shapes(builder_args_from_hf_config(read_json(config_file)))
    differences = [f"{key} {wanted[key]} vs {found[key]}" for key in _SHAPE_KEYS if wanted[key] != found[key]]
    if not differences:
        return
    lora = builder.__name__.startswith("lora_")
    fitting = [b for b, shapes in _SIZED_BUILDERS.items() if shapes == found and b.__name__.startswith("lora_") == lora]
    fits = f"qwenvl_data.models.{fitting[0].__name__}" if fitting else "no sized builder"
    raise ValueError(
        f"model._component_ {component} does not build the model {config_file} describes "
        f"({'; '.join(differences)}: builder vs checkpoint); that checkpoint fits {fits}. Or name "
        "qwenvl_data.models.qwen2_5_vl_from_checkpoint (model_dir: ${checkpoint_dir}) to take the size from it"
    )

