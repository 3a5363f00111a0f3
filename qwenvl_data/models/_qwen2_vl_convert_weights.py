"""HF Qwen2-VL <-> our module layout: its weight key map and config.json.

The state-dict conversion itself is ``hf_to_tune`` / ``tune_to_hf`` with ``QWEN2_VL_KEY_MAP``; both
the released flat names (``model.*``, ``visual.*``) and transformers 5.x's nested ones
(``model.language_model.*``, ``model.visual.*``) are read.
"""

import torch
from torch import nn

from qwenvl_data.models._convert_weights import (
    SHARED_KEY_MAP,
    check_model_type,
    patching_hf_config,
    text_builder_args_from_hf_config,
    text_hf_config_from_model,
)

QWEN2_VL_KEY_MAP = {
    **SHARED_KEY_MAP,
    "visual.blocks.{}.norm1.weight": "visual.layers.{}.sa_norm.weight",
    "visual.blocks.{}.norm1.bias": "visual.layers.{}.sa_norm.bias",
    "visual.blocks.{}.norm2.weight": "visual.layers.{}.mlp_norm.weight",
    "visual.blocks.{}.norm2.bias": "visual.layers.{}.mlp_norm.bias",
    "visual.blocks.{}.mlp.fc1.weight": "visual.layers.{}.mlp.w1.weight",
    "visual.blocks.{}.mlp.fc1.bias": "visual.layers.{}.mlp.w1.bias",
    "visual.blocks.{}.mlp.fc2.weight": "visual.layers.{}.mlp.w2.weight",
    "visual.blocks.{}.mlp.fc2.bias": "visual.layers.{}.mlp.w2.bias",
    "visual.merger.ln_q.weight": "visual.merger.norm.weight",
    "visual.merger.ln_q.bias": "visual.merger.norm.bias",
}
_VISION_ACT = "quick_gelu"


def qwen2_vl_builder_args_from_hf_config(config: dict) -> dict:
    """Arguments of ``qwen2_vl`` for an HF Qwen2-VL ``config.json`` (released flat or transformers 5.x nested).

    Raises:
        ValueError: another ``model_type``, a vision activation other than quick_gelu, or a merger width
            (``vision_config.hidden_size``) other than the language model's.
    """
    check_model_type(config, "qwen2_vl")
    text_args = text_builder_args_from_hf_config(config)
    vision = config["vision_config"]
    if vision.get("hidden_act", _VISION_ACT) != _VISION_ACT:
        raise ValueError(f"config.json: vision hidden_act {vision['hidden_act']!r} is not supported ({_VISION_ACT})")
    out_dim = vision.get("hidden_size", text_args["embed_dim"])
    if out_dim != text_args["embed_dim"]:
        raise ValueError(
            f"config.json: vision_config.hidden_size {out_dim} (the merger's output) differs from the "
            f"language model's hidden_size {text_args['embed_dim']}"
        )
    embed_dim = vision["embed_dim"]
    return dict(
        **text_args,
        vision_depth=vision["depth"],
        vision_embed_dim=embed_dim,
        vision_num_heads=vision["num_heads"],
        vision_intermediate_dim=int(embed_dim * vision.get("mlp_ratio", 4)),
    )


def qwen2_vl_hf_config_from_model(model: nn.Module, dtype: torch.dtype) -> dict:
    """The released-layout ``config.json`` describing a Qwen2-VL ``model`` (read off its modules).

    Args:
        model: a Qwen2-VL ``Qwen2_5_VLModel`` (built by ``qwen2_vl``).
        dtype: the dtype the weights are saved in.

    Returns:
        dict ready for ``json.dump``.

    Raises:
        ValueError: if the vision MLP width is not a whole multiple of the vision hidden size
            (config.json can only say ``mlp_ratio``).
    """
    visual = model.visual
    block = visual.layers[0]
    embed_dim = visual.patch_embed.weight.shape[0]
    intermediate_dim = block.mlp.w1.weight.shape[0]
    if intermediate_dim % embed_dim:
        raise ValueError(f"vision MLP width {intermediate_dim} is not a multiple of the vision hidden size {embed_dim}")
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "model_type": "qwen2_vl",
        **text_hf_config_from_model(model, dtype),
        "vision_config": {
            "depth": len(visual.layers),
            "embed_dim": embed_dim,
            "hidden_act": _VISION_ACT,
            "hidden_size": visual.merger.fc2.weight.shape[0],
            "mlp_ratio": intermediate_dim // embed_dim,
            "num_heads": block.attn.num_heads,
            **patching_hf_config(visual),
        },
    }
