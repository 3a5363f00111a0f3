"""The model a checkpoint's ``config.json`` describes: the builder configs name to take family and size from there,
and the check that a builder named for one family or size is not run on a checkpoint of another."""

import importlib
import os
from collections.abc import Callable
from pathlib import Path

from qwenvl_data._files import read_json
from qwenvl_data.models._families import MODEL_FAMILIES, ModelFamily, model_family
from qwenvl_data.models._model import Qwen2_5_VLModel

# What decides the weights' shapes (a checkpoint of other values cannot be loaded into the model); the last
# three only some families' builders take (None where absent).
_SHAPE_KEYS = (
    "vocab_size", "num_layers", "num_heads", "num_kv_heads", "embed_dim", "intermediate_dim", "tie_word_embeddings",
    "vision_depth", "vision_embed_dim", "vision_num_heads", "vision_intermediate_dim",
    "head_dim", "vision_deepstack_layers", "vision_num_position_embeddings",
)  # fmt: skip


def _shapes(numbers: dict) -> dict:
    """The ``_SHAPE_KEYS`` of builder arguments (a builder without ``tie_word_embeddings`` does not tie)."""
    return {key: numbers.get(key, False) if key == "tie_word_embeddings" else numbers.get(key) for key in _SHAPE_KEYS}


def _sized_builders() -> dict[Callable, tuple[ModelFamily, dict]]:
    """Every family's sized builders (plain and ``lora_``) -> (family, the shapes they build)."""
    sized = {}
    for family in MODEL_FAMILIES.values():
        module = importlib.import_module(next(iter(family.sizes.values())).__module__)
        for name in (*family.sizes, "tiny"):
            numbers = getattr(module, f"{family.model_type.upper()}_{name.upper()}")
            builder_name = f"{family.model_type}_{name}"
            for builder in (getattr(module, builder_name), getattr(module, f"lora_{builder_name}")):
                sized[builder] = (family, _shapes(numbers))
    return sized


# Sized builders -> family and shapes; other builders (your own, or model_from_checkpoint) are not judged here.
_SIZED_BUILDERS = _sized_builders()


def _checkpoint_config(model_dir: str | os.PathLike) -> tuple[Path, dict, ModelFamily]:
    config_file = Path(model_dir) / "config.json"
    config = read_json(config_file)
    return config_file, config, model_family(config.get("model_type"), str(config_file))


def model_from_checkpoint(model_dir: str | os.PathLike, **lora_args: object) -> Qwen2_5_VLModel:
    """Builder (YAML ``_component_``) of the model ``model_dir/config.json`` describes, of the family its
    ``model_type`` names (Qwen2-VL, Qwen2.5-VL or Qwen3-VL), randomly initialized; the recipe's checkpointer loads the
    weights. Sizes, tied or untied output projection and the video position rule all come from config.json.

    Args:
        model_dir: an HF checkpoint directory (``config.json``).
        **lora_args: the arguments of the family's LoRA builder (``lora_attn_modules``, ``lora_rank``, ...) for
            the LoRA variant; none for the plain model.

    Returns:
        Qwen2_5_VLModel.

    Raises:
        ValueError: config.json names no supported family.
    """
    _, config, family = _checkpoint_config(model_dir)
    return family.model_from_hf_config(config, **lora_args)


def qwen2_5_vl_from_checkpoint(model_dir: str | os.PathLike, **lora_args: object) -> Qwen2_5_VLModel:
    """The older name of ``model_from_checkpoint`` (which builds any supported family, Qwen2-VL included)."""
    return model_from_checkpoint(model_dir, **lora_args)


def check_builder_fits_checkpoint(component: str, model_dir: str | os.PathLike | None) -> None:
    """Refuse a sized builder (``model._component_``) whose family or size is not the one ``model_dir/config.json``
    describes, before anything is built. Builders of no fixed size (``model_from_checkpoint``, your own) pass.

    Raises:
        ValueError: naming the builder, the checkpoint, the family or shapes that differ and the builder that fits.
    """
    module, _, name = component.rpartition(".")
    builder = getattr(importlib.import_module(module), name, None) if module else None
    if model_dir is None or builder not in _SIZED_BUILDERS:
        return
    builder_family, wanted = _SIZED_BUILDERS[builder]
    config_file, config, family = _checkpoint_config(model_dir)
    found = _shapes(family.builder_args_from_hf_config(config))
    differences = [f"{key} {wanted[key]} vs {found[key]}" for key in _SHAPE_KEYS if wanted[key] != found[key]]
    if builder_family is not family:
        differences.insert(0, f"model_type {builder_family.model_type} vs {family.model_type}")
    if not differences:
        return
    lora = builder.__name__.startswith("lora_")
    fitting = [
        b for b, (f, shapes) in _SIZED_BUILDERS.items()
        if f is family and shapes == found and b.__name__.startswith("lora_") == lora
    ]  # fmt: skip
    fits = f"qwenvl_data.models.{fitting[0].__name__}" if fitting else "no sized builder"
    raise ValueError(
        f"model._component_ {component} does not build the model {config_file} describes "
        f"({'; '.join(differences)}: builder vs checkpoint); that checkpoint fits {fits}. Or name "
        "qwenvl_data.models.model_from_checkpoint (model_dir: ${checkpoint_dir}) to take family and size from it"
    )
