"""HF Qwen2.5-VL <-> our module layout: state-dict keys, the patch-embedding shape, and config.json.

HF names follow the released checkpoints (``model.*``, ``visual.*``, ``lm_head.weight``), which
transformers 4.x, 5.x and vLLM all read. transformers 5.x's in-memory names
(``model.language_model.*``, ``model.visual.*``) are accepted on input too. A family whose released
checkpoints already use the nested names (Qwen3-VL) spells its key map that way; either spelling is
read for every family, and each family's map decides the spelling written.
"""

import re
from collections.abc import Mapping

import torch
from torch import nn
from torchtune.modules import TiedLinear

from qwenvl_data._constants import (
    ENDOFTEXT_ID,
    IM_END_ID,
    IMAGE_PAD_ID,
    SPECIAL_TOKENS,
    VIDEO_PAD_ID,
    VISION_END_ID,
    VISION_START_ID,
)

# HF key -> our key; "{}" stands for a layer number. Qwen2-VL and Qwen2.5-VL share the language model,
# the patch embedding, the vision attention and the merger MLP; their vision norms and MLPs differ.
SHARED_KEY_MAP = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.layers.{}.self_attn.q_proj.weight": "decoder.layers.{}.attn.q_proj.weight",
    "model.layers.{}.self_attn.q_proj.bias": "decoder.layers.{}.attn.q_proj.bias",
    "model.layers.{}.self_attn.k_proj.weight": "decoder.layers.{}.attn.k_proj.weight",
    "model.layers.{}.self_attn.k_proj.bias": "decoder.layers.{}.attn.k_proj.bias",
    "model.layers.{}.self_attn.v_proj.weight": "decoder.layers.{}.attn.v_proj.weight",
    "model.layers.{}.self_attn.v_proj.bias": "decoder.layers.{}.attn.v_proj.bias",
    "model.layers.{}.self_attn.o_proj.weight": "decoder.layers.{}.attn.output_proj.weight",
    "model.layers.{}.mlp.gate_proj.weight": "decoder.layers.{}.mlp.w1.weight",
    "model.layers.{}.mlp.down_proj.weight": "decoder.layers.{}.mlp.w2.weight",
    "model.layers.{}.mlp.up_proj.weight": "decoder.layers.{}.mlp.w3.weight",
    "model.layers.{}.input_layernorm.weight": "decoder.layers.{}.sa_norm.scale",
    "model.layers.{}.post_attention_layernorm.weight": "decoder.layers.{}.mlp_norm.scale",
    "model.norm.weight": "decoder.norm.scale",
    "lm_head.weight": "decoder.output.weight",
    "visual.patch_embed.proj.weight": "visual.patch_embed.weight",
    "visual.blocks.{}.attn.qkv.weight": "visual.layers.{}.attn.qkv_proj.weight",
    "visual.blocks.{}.attn.qkv.bias": "visual.layers.{}.attn.qkv_proj.bias",
    "visual.blocks.{}.attn.proj.weight": "visual.layers.{}.attn.output_proj.weight",
    "visual.blocks.{}.attn.proj.bias": "visual.layers.{}.attn.output_proj.bias",
    "visual.merger.mlp.0.weight": "visual.merger.fc1.weight",
    "visual.merger.mlp.0.bias": "visual.merger.fc1.bias",
    "visual.merger.mlp.2.weight": "visual.merger.fc2.weight",
    "visual.merger.mlp.2.bias": "visual.merger.fc2.bias",
}
QWEN2_5_VL_KEY_MAP = {
    **SHARED_KEY_MAP,
    "visual.blocks.{}.norm1.weight": "visual.layers.{}.sa_norm.scale",
    "visual.blocks.{}.norm2.weight": "visual.layers.{}.mlp_norm.scale",
    "visual.blocks.{}.mlp.gate_proj.weight": "visual.layers.{}.mlp.w1.weight",
    "visual.blocks.{}.mlp.gate_proj.bias": "visual.layers.{}.mlp.w1.bias",
    "visual.blocks.{}.mlp.down_proj.weight": "visual.layers.{}.mlp.w2.weight",
    "visual.blocks.{}.mlp.down_proj.bias": "visual.layers.{}.mlp.w2.bias",
    "visual.blocks.{}.mlp.up_proj.weight": "visual.layers.{}.mlp.w3.weight",
    "visual.blocks.{}.mlp.up_proj.bias": "visual.layers.{}.mlp.w3.bias",
    "visual.merger.ln_q.weight": "visual.merger.norm.scale",
}
_HF_PATCH_EMBED = "visual.patch_embed.proj.weight"  # the Conv3d kernel, under either spelling
_LAYER_NUMBER = re.compile(r"(?<=\.)(\d+)(?=\.)")
# transformers 5.x module names -> the released checkpoint names.
_HF5_PREFIXES = (("model.language_model.", "model."), ("model.visual.", "visual."))


def _map_key(key: str, mapping: dict[str, str]) -> str:
    if key in mapping:
        return mapping[key]
    match = _LAYER_NUMBER.search(key)
    if match is not None:
        abstract = key[: match.start()] + "{}" + key[match.end() :]
        if abstract in mapping:
            return mapping[abstract].format(match.group(1))
    raise KeyError(f"no mapping for state dict key {key!r}")


def _hf_to_ours(key: str, key_map: dict[str, str]) -> str:
    """Our name of an HF name in either spelling (released flat or transformers 5.x nested), for a key map
    in either spelling."""
    for spelling in (key, _released_name(key), _hf5_name(key)):
        try:
            return _map_key(spelling, key_map)
        except KeyError:
            continue
    raise KeyError(f"no mapping for state dict key {key!r}")


def _inverse(key_map: dict[str, str]) -> dict[str, str]:
    """Our name -> HF name, from a family's HF -> our map."""
    return {ours: hf for hf, ours in key_map.items()}


def _released_name(key: str) -> str:
    """A transformers 5.x name in the released layout (other names unchanged)."""
    for new_prefix, old_prefix in _HF5_PREFIXES:
        if key.startswith(new_prefix):
            return old_prefix + key[len(new_prefix) :]
    return key


def _hf5_name(key: str) -> str:
    """A released-layout name as transformers 5.x names the module (``model.`` -> ``model.language_model.``)."""
    if any(key.startswith(new_prefix) for new_prefix, _ in _HF5_PREFIXES):
        return key
    for new_prefix, old_prefix in _HF5_PREFIXES:
        if key.startswith(old_prefix):
            return new_prefix + key[len(old_prefix) :]
    return key


def hf_to_tune(
    state_dict: dict[str, torch.Tensor],
    *,
    tie_word_embeddings: bool,
    key_map: Mapping[str, str] = QWEN2_5_VL_KEY_MAP,
) -> dict[str, torch.Tensor]:
    """Convert an HF state dict (all shards merged) to ours.

    Args:
        state_dict: HF names -> tensors (released or transformers 5.x names).
        tie_word_embeddings: drop ``lm_head.weight`` (some tied checkpoints store a copy).
        key_map: the family's HF -> our names (``ModelFamily.weight_key_map``); Qwen2.5-VL's by default (the
            earlier signature): pass the model's family's.

    Returns:
        our names -> tensors; the Conv3d patch embedding [D, 3, 2, 14, 14] becomes [D, 1176].

    Raises:
        KeyError: for a key that is not part of the family's model.
    """
    converted = {}
    for key, value in state_dict.items():
        if key == "lm_head.weight" and tie_word_embeddings:
            continue
        if key.endswith(_HF_PATCH_EMBED):
            value = value.reshape(value.shape[0], -1)
        converted[_hf_to_ours(key, key_map)] = value
    return converted


def tune_to_hf(
    state_dict: dict[str, torch.Tensor],
    *,
    in_channels: int,
    temporal_patch_size: int,
    patch_size: int,
    key_map: Mapping[str, str] = QWEN2_5_VL_KEY_MAP,
) -> dict[str, torch.Tensor]:
    """Convert our state dict to the released HF layout (the inverse of ``hf_to_tune``).

    Args:
        state_dict: our names -> tensors, LoRA already merged.
        in_channels, temporal_patch_size, patch_size: the Conv3d kernel shape to restore.
        key_map: the family's HF -> our names, as for ``hf_to_tune``.

    Returns:
        HF names -> tensors.
    """
    to_hf = _inverse(key_map)
    converted = {}
    for key, value in state_dict.items():
        hf_key = _map_key(key, to_hf)
        if hf_key.endswith(_HF_PATCH_EMBED):
            value = value.reshape(value.shape[0], in_channels, temporal_patch_size, patch_size, patch_size)
        converted[hf_key] = value
    return converted


# Our adapter parameter suffix -> PEFT's (PEFT writes the DoRA magnitude without ".weight").
_PEFT_ADAPTER_SUFFIXES = {
    ".lora_a.weight": ".lora_A.weight",
    ".lora_b.weight": ".lora_B.weight",
    ".magnitude": ".lora_magnitude_vector",
}
_FROM_PEFT_ADAPTER_SUFFIXES = {peft: ours for ours, peft in _PEFT_ADAPTER_SUFFIXES.items()}
_PEFT_PREFIX = "base_model.model."


def hf_parameter_name(name: str, key_map: Mapping[str, str]) -> str:
    """transformers 5.x's name of one of our parameters (``key_map``: the family's, as for ``hf_to_tune``).

    Example: ``visual.merger.norm.scale`` -> ``model.visual.merger.ln_q.weight``.
    """
    return _hf5_name(_map_key(name, _inverse(key_map)))


def hf_module_name(module: str, key_map: Mapping[str, str]) -> str:
    """transformers 5.x's path of one of our linear layers, the name PEFT targets (``key_map``: the
    family's, as for ``hf_to_tune``).

    Example: ``decoder.layers.0.attn.q_proj`` -> ``model.language_model.layers.0.self_attn.q_proj``.
    """
    return hf_parameter_name(module + ".weight", key_map).removesuffix(".weight")


def tune_to_peft(
    state_dict: dict[str, torch.Tensor],
    *,
    in_channels: int,
    temporal_patch_size: int,
    patch_size: int,
    key_map: Mapping[str, str] = QWEN2_5_VL_KEY_MAP,
) -> dict[str, torch.Tensor]:
    """Our adapter weights (and modules trained in full) under the names PEFT writes for the
    family's transformers model (``key_map`` as for ``hf_to_tune``).

    ``decoder.layers.0.attn.q_proj.lora_a.weight`` ->
    ``base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight``; a DoRA
    ``magnitude`` -> ``lora_magnitude_vector``; a fully trained weight (the merger) -> its 5.x name
    under ``base_model.model.``, as PEFT saves ``modules_to_save``.
    """
    converted, full = {}, {}
    for key, value in state_dict.items():
        suffix = next((s for s in _PEFT_ADAPTER_SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            full[key] = value
        else:
            module = hf_module_name(key.removesuffix(suffix), key_map)
            converted[_PEFT_PREFIX + module + _PEFT_ADAPTER_SUFFIXES[suffix]] = value
    hf = tune_to_hf(
        full, in_channels=in_channels, temporal_patch_size=temporal_patch_size, patch_size=patch_size, key_map=key_map
    )
    converted.update({_PEFT_PREFIX + _hf5_name(key): value for key, value in hf.items()})
    return converted


def peft_to_tune(
    state_dict: dict[str, torch.Tensor], *, tie_word_embeddings: bool, key_map: Mapping[str, str] = QWEN2_5_VL_KEY_MAP
) -> dict[str, torch.Tensor]:
    """A PEFT ``adapter_model.safetensors`` (transformers 4.x or 5.x module names) in ours; ``key_map``:
    the base model's family's, as for ``hf_to_tune``.

    Raises:
        KeyError: a key outside ``base_model.model.`` or naming no weight of the family's model.
    """
    converted, full = {}, {}
    for key, value in state_dict.items():
        if not key.startswith(_PEFT_PREFIX):
            raise KeyError(f"{key!r} is not a PEFT adapter key (no {_PEFT_PREFIX!r} prefix)")
        key = key.removeprefix(_PEFT_PREFIX)
        if key.endswith(".lora_magnitude_vector.weight"):  # PEFT before 0.12
            key = key.removesuffix(".weight")
        suffix = next((s for s in _FROM_PEFT_ADAPTER_SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            full[key] = value
            continue
        module = _hf_to_ours(key.removesuffix(suffix) + ".weight", key_map).removesuffix(".weight")
        converted[module + _FROM_PEFT_ADAPTER_SUFFIXES[suffix]] = value
    converted.update(hf_to_tune(full, tie_word_embeddings=tie_word_embeddings, key_map=key_map))
    return converted


def check_model_type(config: dict, model_type: str) -> None:
    """Raise ValueError when ``config.json`` names another ``model_type`` (an absent one passes)."""
    found = config.get("model_type", model_type)
    if found != model_type:
        raise ValueError(f"config.json: model_type {found!r}, expected {model_type!r}")


def text_builder_args_from_hf_config(
    config: dict, *, default_mrope_section: tuple[int, ...] = (16, 24, 24), default_rope_theta: float = 1_000_000.0
) -> dict:
    """The language-model arguments (shared by the Qwen2-VL, Qwen2.5-VL and Qwen3-VL builders) of an HF
    ``config.json``.

    Reads the released flat layout (text fields at the top, ``rope_scaling``) and transformers
    5.x's nested one (``text_config`` with ``rope_parameters``). The defaults are the family's
    transformers defaults, for a config.json that leaves them out.

    Raises:
        ValueError: for settings this implementation does not have (another activation,
            sliding-window attention, RoPE scaling other than MRoPE).
    """
    text = {**config, **config.get("text_config", {})}
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "mrope"):
        raise ValueError(f"config.json: RoPE type {rope_type!r} is not supported (only MRoPE)")
    if text.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config.json: text hidden_act {text['hidden_act']!r} is not supported (silu)")
    if text.get("use_sliding_window"):
        raise ValueError("config.json: use_sliding_window=true is not supported")
    num_heads = text["num_attention_heads"]
    tie = bool(config.get("tie_word_embeddings") or text.get("tie_word_embeddings"))
    return dict(
        vocab_size=text["vocab_size"],
        num_layers=text["num_hidden_layers"],
        num_heads=num_heads,
        num_kv_heads=text.get("num_key_value_heads") or num_heads,
        embed_dim=text["hidden_size"],
        intermediate_dim=text["intermediate_size"],
        max_seq_len=text.get("max_position_embeddings", 128_000),
        mrope_section=tuple(rope.get("mrope_section", default_mrope_section)),
        rope_base=float(rope.get("rope_theta", text.get("rope_theta", default_rope_theta))),
        norm_eps=text.get("rms_norm_eps", 1e-6),
        tie_word_embeddings=tie,
    )


def builder_args_from_hf_config(config: dict) -> dict:
    """Arguments of ``qwen2_5_vl`` for an HF ``config.json`` (flat or nested, see
    ``text_builder_args_from_hf_config``).

    Raises:
        ValueError: for another ``model_type`` or settings this implementation does not have.
    """
    check_model_type(config, "qwen2_5_vl")
    vision = config["vision_config"]
    if vision.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config.json: vision hidden_act {vision['hidden_act']!r} is not supported (silu)")
    return dict(
        **text_builder_args_from_hf_config(config),
        vision_depth=vision["depth"],
        vision_embed_dim=vision["hidden_size"],
        vision_num_heads=vision["num_heads"],
        vision_intermediate_dim=vision["intermediate_size"],
        vision_full_attention_layers=tuple(vision["fullatt_block_indexes"]),
        vision_window_size=vision.get("window_size", 112),
        tokens_per_second=vision.get("tokens_per_second", 2),
    )


def patch_in_channels(visual: nn.Module) -> int:
    """Image channels of a vision tower, read off its patch embedding [D, C * T * P * P]."""
    return visual.patch_embed.weight.shape[1] // (visual.temporal_patch_size * visual.patch_size**2)


def patching_hf_config(visual: nn.Module) -> dict:
    """The ``vision_config`` fields of a tower's patching, in both spellings transformers and vLLM read."""
    in_channels = patch_in_channels(visual)
    return {
        "in_chans": in_channels,
        "in_channels": in_channels,
        "patch_size": visual.patch_size,
        "spatial_merge_size": visual.merge_size,
        "spatial_patch_size": visual.patch_size,
        "temporal_patch_size": visual.temporal_patch_size,
    }


def text_hf_config_from_model(model: nn.Module, dtype: torch.dtype) -> dict:
    """The released-layout ``config.json`` fields of the language model and special tokens (shared by the
    Qwen2-VL and Qwen2.5-VL configs), read off ``model``'s modules; ``dtype`` is the saved weights'."""
    decoder = model.decoder
    attn = decoder.layers[0].attn
    rope = attn.pos_embeddings
    num_layers = len(decoder.layers)
    return {
        "attention_dropout": attn.attn_dropout,
        "bos_token_id": ENDOFTEXT_ID,
        "eos_token_id": IM_END_ID,
        "vision_start_token_id": VISION_START_ID,
        "vision_end_token_id": VISION_END_ID,
        "vision_token_id": SPECIAL_TOKENS["<|vision_pad|>"],
        "image_token_id": IMAGE_PAD_ID,
        "video_token_id": VIDEO_PAD_ID,
        "hidden_act": "silu",
        "hidden_size": attn.embed_dim,
        "initializer_range": 0.02,
        "intermediate_size": decoder.layers[0].mlp.w1.weight.shape[0],
        "max_position_embeddings": decoder.max_seq_len,
        "max_window_layers": num_layers,
        "num_attention_heads": attn.num_heads,
        "num_hidden_layers": num_layers,
        "num_key_value_heads": attn.num_kv_heads,
        "rms_norm_eps": decoder.norm.eps,
        "rope_theta": rope.base,
        "rope_scaling": {"type": "mrope", "mrope_section": list(rope.mrope_section)},
        "sliding_window": decoder.max_seq_len,
        "use_sliding_window": False,
        "tie_word_embeddings": isinstance(decoder.output, TiedLinear),
        "torch_dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
        "vocab_size": model.tok_embeddings.num_embeddings,
    }


def hf_config_from_model(model: nn.Module, dtype: torch.dtype) -> dict:
    """The released-layout ``config.json`` describing a Qwen2.5-VL ``model`` (read off its modules).

    Args:
        model: a ``Qwen2_5_VLModel``.
        dtype: the dtype the weights are saved in.

    Returns:
        dict ready for ``json.dump``.
    """
    visual = model.visual
    vision_block = visual.layers[0]
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        **text_hf_config_from_model(model, dtype),
        "vision_config": {
            "depth": len(visual.layers),
            "hidden_act": "silu",
            "hidden_size": visual.patch_embed.weight.shape[0],
            "intermediate_size": vision_block.mlp.w1.weight.shape[0],
            "num_heads": vision_block.attn.num_heads,
            "out_hidden_size": visual.merger.fc2.weight.shape[0],
            **patching_hf_config(visual),
            "window_size": visual.window_size,
            "fullatt_block_indexes": visual.full_attention_layers,
            "tokens_per_second": model.tokens_per_second,
        },
    }
