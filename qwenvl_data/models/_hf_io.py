"""Read and write local HF Qwen2-VL / Qwen2.5-VL / Qwen3-VL directories (``config.json`` + safetensors, single or
sharded)."""

import json
import os
from pathlib import Path

import torch
from torchtune.modules import TiedLinear
from torchtune.training import set_default_dtype

from qwenvl_data.models._processor_files import write_processor_files
from qwenvl_data.models._adapters import (
    ADAPTER_PARAM_SUFFIXES,
    initialize_dora_magnitudes,
    is_adapted,
    merged_state_dict,
)
from qwenvl_data._files import read_json, read_safetensors, write_safetensors
from qwenvl_data.models._convert_weights import hf_to_tune, patch_in_channels, tune_to_hf
from qwenvl_data.models._families import family_of_model, model_family
from qwenvl_data.models._model import Qwen2_5_VLModel
from qwenvl_data.transform import Qwen2_5_VLTransform

_SINGLE_FILE = "model.safetensors"
_INDEX_FILE = "model.safetensors.index.json"


def load_hf_state_dict(model_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of an HF checkpoint directory, under their HF names.

    Args:
        model_dir: directory with ``model.safetensors`` or ``model.safetensors.index.json`` + shards.

    Returns:
        HF name -> tensor (dtype as stored).

    Raises:
        FileNotFoundError: if the directory has neither file, or a shard named by the index is missing.
        ValueError: a corrupt safetensors file or malformed index JSON (naming the file).
    """
    model_dir = Path(model_dir)
    if (model_dir / _INDEX_FILE).is_file():
        weight_map = read_json(model_dir / _INDEX_FILE)["weight_map"]
        files = sorted(set(weight_map.values()))
    elif (model_dir / _SINGLE_FILE).is_file():
        files = [_SINGLE_FILE]
    else:
        raise FileNotFoundError(f"{model_dir}: no {_SINGLE_FILE} or {_INDEX_FILE}")
    state_dict = {}
    for name in files:
        if not (model_dir / name).is_file():
            raise FileNotFoundError(f"{model_dir}: shard {name} listed in {_INDEX_FILE} is missing")
        state_dict.update(read_safetensors(model_dir / name))
    return state_dict


def load_hf_model(
    model_dir: str | os.PathLike, dtype: torch.dtype = torch.float32, **lora_args: object
) -> Qwen2_5_VLModel:
    """Build the model a local HF directory describes and load its weights.

    The family comes from ``config.json``'s ``model_type``: ``qwen2_vl`` (Qwen2-VL), ``qwen2_5_vl``
    (Qwen2.5-VL) or ``qwen3_vl`` (Qwen3-VL, dense); ``qwen3_vl_moe`` is refused as not yet supported. The
    model is created on the meta device
    and materialized once (QLoRA: on CPU), so a large checkpoint is not first randomly initialized.

    Args:
        model_dir: HF directory (``config.json`` + safetensors).
        dtype: parameter dtype of the returned model.
        **lora_args: arguments of ``lora_qwen2_5_vl`` (``lora_attn_modules``, ``lora_rank``, ...)
            to get the LoRA variant, with freshly initialized adapters on the loaded base.

    Returns:
        Qwen2_5_VLModel on CPU (for Qwen2-VL: with its vision tower and position rule; for Qwen3-VL a
        ``Qwen3VLModel``).

    Raises:
        ValueError: an unsupported ``model_type``, or a checkpoint that misses weights of the model or
            holds weights it does not have.

    Example:
        >>> import tempfile
        >>> from qwenvl_data.models import qwen2_5_vl_tiny
        >>> directory = save_hf_model(qwen2_5_vl_tiny(), tempfile.mkdtemp())
        >>> load_hf_model(directory, dtype=torch.bfloat16).tok_embeddings.weight.dtype
        torch.bfloat16
    """
    model_dir = Path(model_dir)
    config = read_json(model_dir / "config.json")
    family = model_family(config.get("model_type"), str(model_dir / "config.json"))
    # An NF4 (QLoRA) weight cannot be materialized from the meta device (torchao 0.13): build those on CPU.
    build_device = "cpu" if lora_args.get("quantize_base") else "meta"
    with set_default_dtype(dtype), torch.device(build_device):
        model = family.model_from_hf_config(config, **lora_args)
    if build_device == "meta":
        model.to_empty(device="cpu")
    tied = isinstance(model.decoder.output, TiedLinear)
    state_dict = hf_to_tune(load_hf_state_dict(model_dir), tie_word_embeddings=tied, key_map=family.weight_key_map)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [key for key in missing if not key.endswith(ADAPTER_PARAM_SUFFIXES)]
    if missing or unexpected:
        raise ValueError(f"{model_dir}: checkpoint lacks {missing[:5]} / has unknown {unexpected[:5]}")
    for module in model.modules():
        if is_adapted(module):
            module.initialize_parameters()
        if hasattr(module, "rope_init"):
            module.rope_init()
    initialize_dora_magnitudes(model)
    return model


def save_hf_model(
    model: Qwen2_5_VLModel,
    out_dir: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = 5 * 1024**3,
    transform: Qwen2_5_VLTransform | None = None,
    source_dir: str | os.PathLike | None = None,
) -> Path:
    """Write ``model`` as a complete HF directory: what its family's transformers class
    (``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``,
    ``Qwen3VLForConditionalGeneration``), ``AutoProcessor`` and vLLM load.

    LoRA/DoRA adapters are merged into the saved weights (a QLoRA base is dequantized first), so the
    weights compute what the adapted model computes. Besides the weights and ``config.json``, the
    tokenizer, chat template, preprocessor and generation configs are written (see
    ``qwenvl_data.models._processor_files.write_processor_files``).

    Args:
        model: a ``Qwen2_5_VLModel`` of either family (LoRA or not).
        out_dir: directory to create or overwrite files in.
        dtype: dtype to save in; None keeps the embedding's dtype (the run's dtype).
        max_shard_bytes: above this, weights are split into shards with an index file.
        transform: the ``Qwen2_5_VLTransform`` the model was trained with (tokenizer, pixel budgets);
            None: ``source_dir``'s, else the packaged vocabulary with the default budgets.
        source_dir: the HF checkpoint the model started from; its tokenizer files and generation config
            are copied.

    Returns:
        Path of ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    visual = model.visual
    family = family_of_model(model)
    weights = tune_to_hf(
        merged_state_dict(model),
        in_channels=patch_in_channels(visual),
        temporal_patch_size=visual.temporal_patch_size,
        patch_size=visual.patch_size,
        key_map=family.weight_key_map,
    )
    save_dtype = dtype or model.tok_embeddings.weight.dtype
    weights = {k: v.detach().to(device="cpu", dtype=save_dtype).contiguous() for k, v in weights.items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    shard_bytes = 0
    for key, value in weights.items():
        size = value.numel() * value.element_size()
        if shards[-1] and shard_bytes + size > max_shard_bytes:
            shards.append({})
            shard_bytes = 0
        shards[-1][key] = value
        shard_bytes += size
    for stale in (_SINGLE_FILE, _INDEX_FILE):
        (out_dir / stale).unlink(missing_ok=True)
    if len(shards) == 1:
        write_safetensors(shards[0], out_dir / _SINGLE_FILE)
    else:
        weight_map = {}
        for i, shard in enumerate(shards, start=1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(shard, out_dir / name)
            weight_map.update(dict.fromkeys(shard, name))
        total = sum(v.numel() * v.element_size() for v in weights.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out_dir / _INDEX_FILE).write_text(json.dumps(index, indent=2))
    config = family.hf_config_from_model(model, save_dtype)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    write_processor_files(out_dir, transform, source_dir, family=family)
    return out_dir
