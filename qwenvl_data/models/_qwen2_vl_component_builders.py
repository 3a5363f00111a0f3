"""How Qwen2-VL is wired: Qwen2.5-VL's language model and patch embedding, its own vision blocks.

Qwen2-VL's vision blocks differ from Qwen2.5-VL's in three ways, all visible in the weights:
LayerNorm (with bias) instead of RMSNorm, a QuickGELU MLP (fc1, fc2) instead of a gated SiLU one,
and full attention in every block (no windows). The merger normalizes with LayerNorm. Positions:
temporal ids count temporal patches, not seconds (``tokens_per_second=None``).
"""

from collections.abc import Sequence

import torch
from torch import nn
from torchtune.modules import FeedForward

from qwenvl_data._constants import MERGE_SIZE, PATCH_SIZE, TEMPORAL_PATCH_SIZE
from qwenvl_data.models._component_builders import lora_qwen2_5_vl, qwen2_5_vl_text_decoder, vision_tower
from qwenvl_data.models._model import Qwen2_5_VLModel
from qwenvl_data.models._vision import PatchMerger, Qwen2_5_VisionTransformer, VisionBlock


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``, the activation of Qwen2-VL's vision MLP (torchtune has one in
    ``models.clip``, whose package needs torchvision, which this stack does not install)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def qwen2_vl_vision_encoder(
    *,
    depth: int,
    embed_dim: int,
    num_heads: int,
    intermediate_dim: int,
    out_dim: int,
    patch_size: int = PATCH_SIZE,
    temporal_patch_size: int = TEMPORAL_PATCH_SIZE,
    merge_size: int = MERGE_SIZE,
    in_channels: int = 3,
    norm_eps: float = 1e-6,
) -> Qwen2_5_VisionTransformer:
    """Build Qwen2-VL's vision tower.

    Args:
        depth: number of vision blocks (32 released).
        embed_dim: vision hidden size (1280 released).
        num_heads: vision attention heads (16 released).
        intermediate_dim: vision MLP hidden size (``embed_dim * mlp_ratio`` = 5120 released).
        out_dim: merger output width = the language model's hidden size.
        patch_size: patch side in pixels (14).
        temporal_patch_size: frames per patch (2).
        merge_size: patches merged per side into one LM token (2).
        in_channels: image channels (3).
        norm_eps: LayerNorm epsilon (1e-6, fixed in the released code).

    Returns:
        Qwen2_5_VisionTransformer without windows: ``pixel_values`` [N, 1176] + grids -> [N / 4, out_dim].
    """
    layers = nn.ModuleList(
        VisionBlock(
            embed_dim,
            num_heads,
            intermediate_dim,
            full_attention=True,
            sa_norm=nn.LayerNorm(embed_dim, eps=norm_eps),
            mlp_norm=nn.LayerNorm(embed_dim, eps=norm_eps),
            mlp=FeedForward(
                gate_proj=nn.Linear(embed_dim, intermediate_dim),
                down_proj=nn.Linear(intermediate_dim, embed_dim),
                activation=QuickGELU(),
            ),
        )
        for _ in range(depth)
    )
    merger = PatchMerger(embed_dim, out_dim, merge_size=merge_size, norm=nn.LayerNorm(embed_dim, eps=norm_eps))
    patching = (in_channels, patch_size, temporal_patch_size, merge_size)
    return vision_tower(layers, merger, embed_dim, num_heads, *patching, window_size=None)


def qwen2_vl(
    *,
    vision_depth: int,
    vision_embed_dim: int,
    vision_num_heads: int,
    vision_intermediate_dim: int,
    **text_args: object,
) -> Qwen2_5_VLModel:
    """Build a full Qwen2-VL: vision tower + merger + Qwen2 language model with MRoPE.

    Args:
        vision_depth, vision_embed_dim, vision_num_heads, vision_intermediate_dim: the vision
            tower, see ``qwen2_vl_vision_encoder``; its merger projects to ``embed_dim``.
        **text_args: the language model, the arguments of ``qwen2_5_vl_text_decoder`` (the same
            decoder): ``vocab_size``, ``num_layers``, ``num_heads``, ``num_kv_heads``, ``embed_dim``,
            ``intermediate_dim``, ``max_seq_len``, ``mrope_section``, optional ``rope_base``,
            ``norm_eps``, ``attn_dropout``, ``tie_word_embeddings``.

    Returns:
        Qwen2_5_VLModel whose position ids follow Qwen2-VL's rule (``tokens_per_second=None``).
    """
    tok_embeddings, decoder = qwen2_5_vl_text_decoder(**text_args)
    visual = qwen2_vl_vision_encoder(
        depth=vision_depth,
        embed_dim=vision_embed_dim,
        num_heads=vision_num_heads,
        intermediate_dim=vision_intermediate_dim,
        out_dim=tok_embeddings.embedding_dim,
    )
    return Qwen2_5_VLModel(tok_embeddings=tok_embeddings, decoder=decoder, visual=visual, tokens_per_second=None)


def lora_qwen2_vl(
    lora_attn_modules: Sequence[str],
    apply_lora_to_mlp: bool = False,
    apply_lora_to_output: bool = False,
    **lora_and_model_args: object,
) -> Qwen2_5_VLModel:
    """Build Qwen2-VL with LoRA/DoRA adapters on chosen language-model projections.

    Args:
        lora_attn_modules, apply_lora_to_mlp, apply_lora_to_output: what to adapt, as in ``lora_qwen2_5_vl``.
        **lora_and_model_args: the adapter arguments of ``lora_qwen2_5_vl`` (``lora_rank``,
            ``lora_alpha``, ``use_dora``, ...) and the arguments of ``qwen2_vl``.

    Returns:
        Qwen2_5_VLModel with ``LoRALinear`` (or ``DoRALinear``) projections.
    """
    return lora_qwen2_5_vl(
        lora_attn_modules, apply_lora_to_mlp, apply_lora_to_output, build=qwen2_vl, **lora_and_model_args
    )
