"""PEFT's adapter directory for transformers' Qwen2.5-VL and Qwen2-VL models: written from our
LoRA model, read from ours or any PEFT LoRA/DoRA run.

The directory is ``adapter_config.json`` (PEFT's ``LoraConfig`` fields) + ``adapter_model.safetensors``
(PEFT's key names, see ``tune_to_peft``), which ``peft.PeftModel.from_pretrained`` and vLLM's LoRA
loader read. Rules follow PEFT (``peft.tuners.lora``): the update is s * B @ A with
s = lora_alpha / r (lora_alpha / sqrt(r) with ``use_rslora``), per-module r and alpha from
``rank_pattern`` / ``alpha_pattern``; DoRA stores its magnitude as ``lora_magnitude_vector``.
"""

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from qwenvl_data._files import read_safetensors, write_safetensors
from qwenvl_data.models._adapters import (
    ADAPTER_PARAM_SUFFIXES,
    DoRALinear,
    adapter_scaling,
    is_adapted,
    merge_adapter_weight,
)
from qwenvl_data.models._convert_weights import (
    QWEN2_5_VL_KEY_MAP,
    hf_module_name,
    hf_parameter_name,
    patch_in_channels,
    peft_to_tune,
    tune_to_peft,
)
from qwenvl_data.models._families import family_of_model

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_LAYER_NUMBER = re.compile(r"\.\d+\.")


def _modules_to_save_name(model: nn.Module, module: str, key_map: dict[str, str]) -> str:
    """PEFT's ``modules_to_save`` name of one of our modules trained in full: the transformers module holding
    all its parameters (the common path of their HF names), without the leading ``model.`` (PEFT matches a
    suffix of the path): ``visual.merger`` -> ``visual.merger``, Qwen3-VL's ``visual.deepstack_mergers.0`` ->
    ``visual.deepstack_merger_list.0``.

    Raises:
        ValueError: the module does not exist, has no parameters, or has no HF name.
    """
    try:
        names = [f"{module}.{name}" for name, _ in model.get_submodule(module).named_parameters()]
        paths = [hf_parameter_name(name, key_map).split(".")[:-1] for name in names]
    except (AttributeError, KeyError) as error:
        raise ValueError(f"module trained in full {module!r} has no PEFT modules_to_save name: {error}") from None
    if not paths:
        raise ValueError(f"module trained in full {module!r} has no parameters")
    return ".".join(os.path.commonprefix(paths)).removeprefix("model.")


def _target_modules_regex(hf_modules: Sequence[str]) -> str:
    """PEFT ``target_modules`` matching exactly these modules in every layer (PEFT full-matches a regex);
    plain names such as ``gate_proj`` would also adapt the vision tower's MLPs."""
    patterns = sorted({re.escape(_LAYER_NUMBER.sub(".<N>.", name)).replace("<N>", r"\d+") for name in hf_modules})
    return "(" + "|".join(patterns) + ")"


def peft_adapter_config(
    model: nn.Module, *, trained_modules: Sequence[str] = (), base_model: str | None = None
) -> dict:
    """PEFT's ``adapter_config.json`` for ``model``'s adapters; raises when they cannot be written as one.

    Recipes call it before training, so a model whose adapter could not be exported is refused then.

    Args:
        model: a LoRA/DoRA ``Qwen2_5_VLModel`` (sharded or not: only its module layout is read).
        trained_modules: our names of modules trained in full (``"visual.merger"``, ``"visual"``),
            PEFT's ``modules_to_save``.
        base_model: the HF checkpoint the adapter applies to (``base_model_name_or_path``).

    Raises:
        ValueError: the model has no adapters, mixes LoRA and DoRA, its layers differ in rank, alpha or
            dropout, or a module trained in full has no PEFT name.
    """
    adapted = {name: module for name, module in model.named_modules() if is_adapted(module)}
    if not adapted:
        raise ValueError("the model has no LoRA/DoRA layers: there is no adapter to write")
    settings = {
        (m.lora_a.out_features, adapter_scaling(m), isinstance(m, DoRALinear), getattr(m.dropout, "p", 0.0))
        for m in adapted.values()
    }
    if len(settings) != 1:
        raise ValueError(f"adapter layers differ in (rank, scale, DoRA, dropout): {sorted(settings)}")
    rank, scaling, use_dora, dropout = settings.pop()
    key_map = family_of_model(model).weight_key_map
    modules_to_save = [_modules_to_save_name(model, module, key_map) for module in trained_modules]
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": scaling * rank,
        "lora_dropout": dropout,
        "use_dora": use_dora,
        "use_rslora": False,
        "target_modules": _target_modules_regex([hf_module_name(m, key_map) for m in adapted]),
        "modules_to_save": modules_to_save or None,
        "bias": "none",
        "lora_bias": False,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "rank_pattern": {},
        "alpha_pattern": {},
        "layers_to_transform": None,
        "layers_pattern": None,
        "revision": None,
    }


def write_peft_adapter(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    out_dir: str | os.PathLike,
    *,
    trained_modules: Sequence[str] = (),
    base_model: str | None = None,
) -> Path:
    """Write ``model``'s adapters (and the modules it trained in full) as a PEFT adapter directory.

    Args:
        model, trained_modules, base_model: see ``peft_adapter_config``.
        state_dict: the model's unsharded weights, our names.
        out_dir: an existing directory to write the two files into.

    Returns:
        ``out_dir``.

    Raises:
        ValueError: see ``peft_adapter_config``.
    """
    config = peft_adapter_config(model, trained_modules=trained_modules, base_model=base_model)
    adapted = [name for name, module in model.named_modules() if is_adapted(module)]
    names = [f"{m}{suffix}" for m in adapted for suffix in ADAPTER_PARAM_SUFFIXES if f"{m}{suffix}" in state_dict]
    names += [k for k in state_dict for m in trained_modules if k.startswith(m + ".")]
    visual = model.visual
    weights = tune_to_peft(
        {name: state_dict[name].contiguous() for name in names},
        in_channels=patch_in_channels(visual),
        temporal_patch_size=visual.temporal_patch_size,
        patch_size=visual.patch_size,
        key_map=family_of_model(model).weight_key_map,
    )
    out_dir = Path(out_dir)
    write_safetensors(weights, out_dir / ADAPTER_WEIGHTS)
    (out_dir / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    return out_dir


@dataclass
class PeftAdapter:
    """A PEFT LoRA/DoRA adapter in our names.

    Attributes:
        lora: our module name -> ``(lora_a [r, in], lora_b [out, r], magnitude [out] or None)``.
        scaling: our module name -> s of its update s * B @ A.
        full_weights: our parameter name -> tensor, for PEFT's ``modules_to_save``.
        config: the ``adapter_config.json`` as read.
    """

    lora: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]
    scaling: dict[str, float]
    full_weights: dict[str, torch.Tensor]
    config: dict


def _pattern_value(patterns: dict, hf_module: str, default: float) -> float:
    """PEFT's rank/alpha pattern lookup: the first key matching the module path's end."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", hf_module):
            return value
    return default


def read_peft_adapter(
    adapter_dir: str | os.PathLike, *, tie_word_embeddings: bool, key_map: Mapping[str, str] = QWEN2_5_VL_KEY_MAP
) -> PeftAdapter:
    """Read a PEFT LoRA/DoRA adapter directory (ours or made by PEFT).

    Args:
        adapter_dir: holds ``adapter_config.json`` and ``adapter_model.safetensors``.
        tie_word_embeddings: whether the base ties its output projection (see ``hf_to_tune``).
        key_map: the base model's family's weight names (``family_of_model(base).weight_key_map``; every
            caller here passes it); Qwen2.5-VL's by default, the earlier signature.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: not a LoRA adapter, or settings we cannot apply (``fan_in_fan_out``, ``lora_bias``),
            or a key that names no weight of ``key_map``'s family.
    """
    adapter_dir = Path(adapter_dir)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (adapter_dir / name).is_file():
            raise FileNotFoundError(f"{adapter_dir} is not a PEFT adapter directory: no {name}")
    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    if config.get("peft_type") != "LORA":
        raise ValueError(
            f"{adapter_dir / ADAPTER_CONFIG}: peft_type {config.get('peft_type')!r}, only LORA is supported"
        )
    for flag in ("fan_in_fan_out", "lora_bias"):
        if config.get(flag):
            raise ValueError(f"{adapter_dir / ADAPTER_CONFIG}: {flag}=true is not supported")
    try:
        weights = peft_to_tune(
            read_safetensors(adapter_dir / ADAPTER_WEIGHTS), tie_word_embeddings=tie_word_embeddings, key_map=key_map
        )
    except KeyError as error:
        raise ValueError(f"{adapter_dir / ADAPTER_WEIGHTS}: {error.args[0]}") from None
    modules = sorted({k.removesuffix(".lora_a.weight") for k in weights if k.endswith(".lora_a.weight")})
    lora, scaling = {}, {}
    for module in modules:
        parts = [weights.pop(f"{module}{suffix}", None) for suffix in ADAPTER_PARAM_SUFFIXES]
        if parts[1] is None:
            raise ValueError(f"{adapter_dir / ADAPTER_WEIGHTS}: {module} has lora_A but no lora_B")
        lora[module] = tuple(parts)
        hf_name = hf_module_name(module, key_map)
        rank = _pattern_value(config.get("rank_pattern") or {}, hf_name, parts[0].shape[0])
        alpha = _pattern_value(config.get("alpha_pattern") or {}, hf_name, config["lora_alpha"])
        scaling[module] = alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
    stray = sorted(k for k in weights if k.endswith(ADAPTER_PARAM_SUFFIXES))
    if stray:
        raise ValueError(f"{adapter_dir / ADAPTER_WEIGHTS}: adapter weights without lora_A: {stray[:5]}")
    return PeftAdapter(lora=lora, scaling=scaling, full_weights=weights, config=config)


def _describe(keys: Sequence[str]) -> str:
    return f"{list(keys[:5])}{f' and {len(keys) - 5} more' if len(keys) > 5 else ''}"


def merge_peft_adapter(state_dict: dict[str, torch.Tensor], adapter: PeftAdapter) -> dict[str, torch.Tensor]:
    """Plain weights (our names) with ``adapter`` folded in: merged LoRA/DoRA layers, replaced full modules.

    Returns:
        a new dict; merged weights keep the base weight's dtype.

    Raises:
        ValueError: naming the adapter keys the base lacks, or whose shapes do not fit it.
    """
    merged = dict(state_dict)
    wanted = [f"{m}.weight" for m in adapter.lora] + list(adapter.full_weights)
    unexpected = [k for k in wanted if k not in state_dict]
    if unexpected:
        raise ValueError(f"the adapter changes weights the base checkpoint does not have: {_describe(unexpected)}")
    for module, (lora_a, lora_b, magnitude) in adapter.lora.items():
        base = state_dict[f"{module}.weight"]
        if (lora_b.shape[0], lora_a.shape[1]) != tuple(base.shape):
            raise ValueError(f"adapter for {module} is {lora_b.shape[0]}x{lora_a.shape[1]}, the base weight "
                             f"is {tuple(base.shape)}: the adapter was trained on another model")  # fmt: skip
        merged[f"{module}.weight"] = merge_adapter_weight(
            base, lora_a, lora_b, adapter.scaling[module], magnitude
        ).to(base.dtype)
    for key, value in adapter.full_weights.items():
        if value.shape != state_dict[key].shape:
            raise ValueError(f"adapter weight {key} has shape {tuple(value.shape)}, the base "
                             f"{tuple(state_dict[key].shape)}: the adapter was trained on another model")  # fmt: skip
        merged[key] = value.to(state_dict[key].dtype)
    return merged


def load_peft_adapter(model: nn.Module, adapter: PeftAdapter) -> None:
    """Put ``adapter``'s weights into a LoRA/DoRA model built with the same layers, rank and alpha.

    Raises:
        ValueError: naming the adapter layers the model lacks (unexpected) or the model's adapter layers
            the adapter lacks (missing), a LoRA/DoRA mismatch, a different scale, or a weight the model lacks.
    """
    adapted = {name: m for name, m in model.named_modules() if is_adapted(m)}
    missing, unexpected = sorted(set(adapted) - set(adapter.lora)), sorted(set(adapter.lora) - set(adapted))
    if missing or unexpected:
        raise ValueError(f"the adapter does not fit the configured LoRA model: layers the model adapts but the "
                         f"adapter lacks (missing) {_describe(missing)}; adapter layers the model does not "
                         f"adapt (unexpected) {_describe(unexpected)}")  # fmt: skip
    weights = {}
    for name, module in adapted.items():
        lora_a, lora_b, magnitude = adapter.lora[name]
        if (magnitude is not None) != isinstance(module, DoRALinear):
            raise ValueError(f"{name}: the adapter is {'DoRA' if magnitude is not None else 'LoRA'}, the "
                             f"model's layer is not; set use_dora to match the adapter")  # fmt: skip
        if not math.isclose(adapter.scaling[name], adapter_scaling(module), rel_tol=1e-6):
            raise ValueError(f"{name}: the adapter's scale lora_alpha / r is {adapter.scaling[name]:g}, the "
                             f"model's {adapter_scaling(module):g}; set lora_rank and lora_alpha to match")  # fmt: skip
        weights.update({f"{name}.lora_a.weight": lora_a, f"{name}.lora_b.weight": lora_b})
        if magnitude is not None:
            weights[f"{name}.magnitude"] = magnitude
    own = model.state_dict()
    stray = [k for k in adapter.full_weights if k not in own]
    if stray:
        raise ValueError(f"the adapter holds weights the model does not have: {_describe(stray)}")
    weights.update(adapter.full_weights)
    mismatched = [k for k, v in weights.items() if v.shape != own[k].shape]
    if mismatched:
        raise ValueError(f"adapter weights of another shape than the model's (another rank or size): "
                         f"{_describe(mismatched)}")  # fmt: skip
    model.load_state_dict(weights, strict=False)
