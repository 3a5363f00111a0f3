"""HF Qwen3-VL <-> our module layout: its weight key map and config.json.

The released checkpoints (and transformers 5.x) name the weights ``model.language_model.*``,
``model.visual.*`` and ``lm_head.weight``; the key map is spelled that way, so ``tune_to_hf`` writes what
the released files hold (vLLM reads those names), and ``hf_to_tune`` reads the flat spelling too.
config.json is nested (``text_config``, ``vision_config``); the released files put RoPE under
``text_config.rope_scaling`` + ``rope_theta``, transformers 5.x under ``text_config.rope_parameters``:
both are read, and transformers 5.x's spelling is written.
"""

import torch
from torch import nn
from torchtune.modules import TiedLinear

from qwenvl_data._constants import ENDOFTEXT_ID, IM_END_ID, IMAGE_PAD_ID, VIDEO_PAD_ID, VISION_END_ID, VISION_START_ID
from qwenvl_data.models._convert_weights import check_model_type, patching_hf_config, text_builder_args_from_hf_config

_TEXT = "model.language_model."
_VISION = "model.visual."
QWEN3_VL_KEY_MAP = {
    f"{_TEXT}embed_tokens.weight": "tok_embeddings.weight",
    f"{_TEXT}layers.{{}}.self_attn.q_proj.weight": "decoder.layers.{}.attn.q_proj.weight",
    f"{_TEXT}layers.{{}}.self_attn.k_proj.weight": "decoder.layers.{}.attn.k_proj.weight",
    f"{_TEXT}layers.{{}}.self_attn.v_proj.weight": "decoder.layers.{}.attn.v_proj.weight",
    f"{_TEXT}layers.{{}}.self_attn.o_proj.weight": "decoder.layers.{}.attn.output_proj.weight",
    f"{_TEXT}layers.{{}}.self_attn.q_norm.weight": "decoder.layers.{}.attn.q_norm.scale",
    f"{_TEXT}layers.{{}}.self_attn.k_norm.weight": "decoder.layers.{}.attn.k_norm.scale",
    f"{_TEXT}layers.{{}}.mlp.gate_proj.weight": "decoder.layers.{}.mlp.w1.weight",
    f"{_TEXT}layers.{{}}.mlp.down_proj.weight": "decoder.layers.{}.mlp.w2.weight",
    f"{_TEXT}layers.{{}}.mlp.up_proj.weight": "decoder.layers.{}.mlp.w3.weight",
    f"{_TEXT}layers.{{}}.input_layernorm.weight": "decoder.layers.{}.sa_norm.scale",
    f"{_TEXT}layers.{{}}.post_attention_layernorm.weight": "decoder.layers.{}.mlp_norm.scale",
    f"{_TEXT}norm.weight": "decoder.norm.scale",
    "lm_head.weight": "decoder.output.weight",
    f"{_VISION}patch_embed.proj.weight": "visual.patch_embed.weight",
    f"{_VISION}patch_embed.proj.bias": "visual.patch_embed.bias",
    f"{_VISION}pos_embed.weight": "visual.pos_embed.weight",
    f"{_VISION}blocks.{{}}.norm1.weight": "visual.layers.{}.sa_norm.weight",
    f"{_VISION}blocks.{{}}.norm1.bias": "visual.layers.{}.sa_norm.bias",
    f"{_VISION}blocks.{{}}.norm2.weight": "visual.layers.{}.mlp_norm.weight",
    f"{_VISION}blocks.{{}}.norm2.bias": "visual.layers.{}.mlp_norm.bias",
    f"{_VISION}blocks.{{}}.attn.qkv.weight": "visual.layers.{}.attn.qkv_proj.weight",
    f"{_VISION}blocks.{{}}.attn.qkv.bias": "visual.layers.{}.attn.qkv_proj.bias",
    f"{_VISION}blocks.{{}}.attn.proj.weight": "visual.layers.{}.attn.output_proj.weight",
    f"{_VISION}blocks.{{}}.attn.proj.bias": "visual.layers.{}.attn.output_proj.bias",
    f"{_VISION}blocks.{{}}.mlp.linear_fc1.weight": "visual.layers.{}.mlp.w1.weight",
    f"{_VISION}blocks.{{}}.mlp.linear_fc1.bias": "visual.layers.{}.mlp.w1.bias",
    f"{_VISION}blocks.{{}}.mlp.linear_fc2.weight": "visual.layers.{}.mlp.w2.weight",
    f"{_VISION}blocks.{{}}.mlp.linear_fc2.bias": "visual.layers.{}.mlp.w2.bias",
    f"{_VISION}merger.norm.weight": "visual.merger.norm.weight",
    f"{_VISION}merger.norm.bias": "visual.merger.norm.bias",
    f"{_VISION}merger.linear_fc1.weight": "visual.merger.fc1.weight",
    f"{_VISION}merger.linear_fc1.bias": "visual.merger.fc1.bias",
    f"{_VISION}merger.linear_fc2.weight": "visual.merger.fc2.weight",
    f"{_VISION}merger.linear_fc2.bias": "visual.merger.fc2.bias",
    f"{_VISION}deepstack_merger_list.{{}}.norm.weight": "visual.deepstack_mergers.{}.norm.weight",
    f"{_VISION}deepstack_merger_list.{{}}.norm.bias": "visual.deepstack_mergers.{}.norm.bias",
    f"{_VISION}deepstack_merger_list.{{}}.linear_fc1.weight": "visual.deepstack_mergers.{}.fc1.weight",
    f"{_VISION}deepstack_merger_list.{{}}.linear_fc1.bias": "visual.deepstack_mergers.{}.fc1.bias",
    f"{_VISION}deepstack_merger_list.{{}}.linear_fc2.weight": "visual.deepstack_mergers.{}.fc2.weight",
    f"{_VISION}deepstack_merger_list.{{}}.linear_fc2.bias": "visual.deepstack_mergers.{}.fc2.bias",
}
_VISION_ACT = "gelu_pytorch_tanh"
_TEXT_ACT = "silu"


def qwen3_vl_builder_args_from_hf_config(config: dict) -> dict:
    """Arguments of ``qwen3_vl`` for an HF Qwen3-VL ``config.json`` (nested; RoPE as released or as transformers 5.x).

    Args:
        config: the parsed ``config.json``.

    Returns:
        dict of ``qwen3_vl`` keyword arguments.

    Raises:
        ValueError: another ``model_type``; settings this implementation does not have (activations, q/k/v
            bias, RoPE scaling, chunked MRoPE, sliding windows, other patching); a merger width other than the
            language model's.
    """
    check_model_type(config, "qwen3_vl")
    text_args = text_builder_args_from_hf_config(
        config, default_mrope_section=(24, 20, 20), default_rope_theta=500_000.0
    )
    text, vision = config.get("text_config", config), config["vision_config"]
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    unsupported = {
        "vision hidden_act": (vision.get("hidden_act", _VISION_ACT), _VISION_ACT),
        "attention_bias": (text.get("attention_bias", False), False),
        "mrope_interleaved": (rope.get("mrope_interleaved", True), True),
        "vision patch_size": (vision.get("patch_size", 16), 16),
        "vision temporal_patch_size": (vision.get("temporal_patch_size", 2), 2),
        "vision spatial_merge_size": (vision.get("spatial_merge_size", 2), 2),
        "vision in_channels": (vision.get("in_channels", 3), 3),
    }
    for name, (found, supported) in unsupported.items():
        if found != supported:
            raise ValueError(f"config.json: {name} {found!r} is not supported ({supported!r})")
    if vision.get("out_hidden_size", text_args["embed_dim"]) != text_args["embed_dim"]:
        raise ValueError(
            f"config.json: vision_config.out_hidden_size {vision['out_hidden_size']} (the mergers' output) differs "
            f"from the language model's hidden_size {text_args['embed_dim']}"
        )
    return dict(
        **text_args,
        head_dim=text.get("head_dim") or text_args["embed_dim"] // text_args["num_heads"],
        vision_depth=vision["depth"],
        vision_embed_dim=vision["hidden_size"],
        vision_num_heads=vision["num_heads"],
        vision_intermediate_dim=vision["intermediate_size"],
        vision_deepstack_layers=tuple(vision.get("deepstack_visual_indexes", (8, 16, 24))),
        vision_num_position_embeddings=vision.get("num_position_embeddings", 2304),
    )


def qwen3_vl_hf_config_from_model(model: nn.Module, dtype: torch.dtype) -> dict:
    """The ``config.json`` (transformers 5.x nested layout, as the released files) describing a Qwen3-VL ``model``.

    Args:
        model: a ``Qwen3VLModel`` (built by ``qwen3_vl``), LoRA or not: only module shapes are read.
        dtype: the dtype the weights are saved in.

    Returns:
        dict ready for ``json.dump``.
    """
    decoder, visual = model.decoder, model.visual
    attn = decoder.layers[0].attn
    rope = attn.pos_embeddings
    tied = isinstance(decoder.output, TiedLinear)
    dtype_name = str(dtype).removeprefix("torch.")
    text_config = {
        "model_type": "qwen3_vl_text",
        "attention_bias": False,
        "attention_dropout": attn.attn_dropout,
        "bos_token_id": ENDOFTEXT_ID,
        "eos_token_id": IM_END_ID,
        "dtype": dtype_name,
        "head_dim": attn.head_dim,
        "hidden_act": _TEXT_ACT,
        "hidden_size": attn.embed_dim,
        "initializer_range": 0.02,
        "intermediate_size": decoder.layers[0].mlp.w1.weight.shape[0],
        "max_position_embeddings": decoder.max_seq_len,
        "num_attention_heads": attn.num_heads,
        "num_hidden_layers": len(decoder.layers),
        "num_key_value_heads": attn.num_kv_heads,
        "rms_norm_eps": decoder.norm.eps,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": rope.base,
            "mrope_section": list(rope.mrope_section),
            "mrope_interleaved": rope.interleaved,
        },
        "tie_word_embeddings": tied,
        "use_cache": True,
        "vocab_size": model.tok_embeddings.num_embeddings,
    }
    block = visual.layers[0]
    patching = patching_hf_config(visual)
    vision_config = {
        "model_type": "qwen3_vl_vision",
        "deepstack_visual_indexes": list(visual.deepstack_layers),
        "depth": len(visual.layers),
        "hidden_act": _VISION_ACT,
        "hidden_size": visual.patch_embed.weight.shape[0],
        "in_channels": patching["in_channels"],
        "initializer_range": 0.02,
        "intermediate_size": block.mlp.w1.weight.shape[0],
        "num_heads": block.attn.num_heads,
        "num_position_embeddings": visual.pos_embed.num_embeddings,
        "out_hidden_size": visual.merger.fc2.weight.shape[0],
        "patch_size": patching["patch_size"],
        "spatial_merge_size": patching["spatial_merge_size"],
        "temporal_patch_size": patching["temporal_patch_size"],
    }
    return {
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "model_type": "qwen3_vl",
        "dtype": dtype_name,
        "image_token_id": IMAGE_PAD_ID,
        "video_token_id": VIDEO_PAD_ID,
        "vision_start_token_id": VISION_START_ID,
        "vision_end_token_id": VISION_END_ID,
        "tie_word_embeddings": tied,
        "text_config": text_config,
        "vision_config": vision_config,
    }
