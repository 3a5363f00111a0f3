"""How Qwen3-VL (dense) is wired from torchtune building blocks; every size is a parameter.

Language model: Qwen3 (``qwen2_5_vl_text_decoder`` with ``qk_norm``): no q/k/v bias, RMSNorm over each
query/key head before the rotary embedding, an explicit head_dim, interleaved MRoPE, and a
``DeepstackDecoder``. Vision tower: 16-pixel patches embedded with a bias (1536 values per patch row), a
learned 48 x 48 position table interpolated to each frame, 2-D RoPE, LayerNorm blocks with a tanh-GELU
MLP (linear_fc1, linear_fc2), full attention within each frame, a merger that normalizes each patch before
the 2x2 shuffle, and DeepStack: intermediate blocks' outputs through their own mergers (normalized after
the shuffle), added to the first decoder layers' hidden states at the vision tokens.
"""

from collections.abc import Sequence

from torch import nn
from torchtune.modules import FeedForward

from qwenvl_data._constants import MERGE_SIZE, TEMPORAL_PATCH_SIZE
from qwenvl_data.models._component_builders import lora_qwen2_5_vl, qwen2_5_vl_text_decoder, vision_tower
from qwenvl_data.models._qwen3_vl_model import Qwen3VLModel
from qwenvl_data.models._vision import (
    InterpolatedPositionEmbedding,
    PatchMerger,
    Qwen2_5_VisionTransformer,
    VisionBlock,
)

QWEN3_VL_PATCH_SIZE = 16  # pixels per patch side (preprocessor_config.json of the released checkpoints)
# LayerNorm epsilon of the vision blocks and mergers: fixed in the released code (not in config.json).
_VISION_NORM_EPS = 1e-6


def qwen3_vl_vision_encoder(
    *,
    depth: int,
    embed_dim: int,
    num_heads: int,
    intermediate_dim: int,
    out_dim: int,
    deepstack_layers: Sequence[int],
    num_position_embeddings: int = 2304,
    patch_size: int = QWEN3_VL_PATCH_SIZE,
    temporal_patch_size: int = TEMPORAL_PATCH_SIZE,
    merge_size: int = MERGE_SIZE,
    in_channels: int = 3,
) -> Qwen2_5_VisionTransformer:
    """Build Qwen3-VL's vision tower.

    Args:
        depth: number of vision blocks (27 for 8B/32B, 24 for 2B/4B).
        embed_dim: vision hidden size (1152; 1024).
        num_heads: vision attention heads (16).
        intermediate_dim: vision MLP hidden size (4304; 4096).
        out_dim: width of the merger and DeepStack outputs = the language model's hidden size.
        deepstack_layers: blocks whose outputs feed the DeepStack mergers (``deepstack_visual_indexes``:
            [8, 16, 24]; [5, 11, 17]).
        num_position_embeddings: learned position table size, a square (2304 = 48 x 48).
        patch_size: patch side in pixels (16).
        temporal_patch_size: frames per patch (2).
        merge_size: patches merged per side into one LM token (2).
        in_channels: image channels (3).

    Returns:
        Qwen2_5_VisionTransformer with a position embedding and DeepStack mergers:
        ``pixel_values`` [N, 1536] + grids -> [N / 4, out_dim] (and the DeepStack features with ``with_deepstack``).
    """

    def merger(norm_dim: int, after_shuffle: bool) -> PatchMerger:
        norm = nn.LayerNorm(norm_dim, eps=_VISION_NORM_EPS)
        return PatchMerger(embed_dim, out_dim, merge_size=merge_size, norm=norm, norm_after_shuffle=after_shuffle)

    layers = nn.ModuleList(
        VisionBlock(
            embed_dim,
            num_heads,
            intermediate_dim,
            full_attention=True,
            sa_norm=nn.LayerNorm(embed_dim, eps=_VISION_NORM_EPS),
            mlp_norm=nn.LayerNorm(embed_dim, eps=_VISION_NORM_EPS),
            mlp=FeedForward(
                gate_proj=nn.Linear(embed_dim, intermediate_dim),
                down_proj=nn.Linear(intermediate_dim, embed_dim),
                activation=nn.GELU(approximate="tanh"),
            ),
        )
        for _ in range(depth)
    )
    patching = (in_channels, patch_size, temporal_patch_size, merge_size)
    return vision_tower(
        layers,
        merger(embed_dim, after_shuffle=False),
        embed_dim,
        num_heads,
        *patching,
        window_size=None,
        patch_bias=True,
        pos_embed=InterpolatedPositionEmbedding(num_position_embeddings, embed_dim, merge_size),
        deepstack_layers=tuple(deepstack_layers),
        deepstack_mergers=nn.ModuleList(
            merger(embed_dim * merge_size**2, after_shuffle=True) for _ in deepstack_layers
        ),
    )


def qwen3_vl(
    *,
    vision_depth: int,
    vision_embed_dim: int,
    vision_num_heads: int,
    vision_intermediate_dim: int,
    vision_deepstack_layers: Sequence[int],
    vision_num_position_embeddings: int = 2304,
    **text_args: object,
) -> Qwen3VLModel:
    """Build a full Qwen3-VL (dense): vision tower with DeepStack + Qwen3 language model with interleaved MRoPE.

    Args:
        vision_depth, vision_embed_dim, vision_num_heads, vision_intermediate_dim, vision_deepstack_layers,
        vision_num_position_embeddings: the vision tower, see ``qwen3_vl_vision_encoder``; its mergers
            project to ``embed_dim``.
        **text_args: the language model, the arguments of ``qwen2_5_vl_text_decoder`` (its Qwen3 form is
            built here): ``vocab_size`` (151936 released), ``num_layers``, ``num_heads``, ``num_kv_heads``,
            ``embed_dim``, ``intermediate_dim``, ``head_dim`` (128 released, not embed_dim // num_heads in
            general), ``max_seq_len`` (262144 released), optional ``mrope_section`` (default [24, 20, 20],
            interleaved), ``rope_base`` (default 5e6), ``norm_eps``, ``attn_dropout``, ``tie_word_embeddings``
            (2B, 4B).

    Returns:
        Qwen3VLModel.

    Example:
        >>> import torch
        >>> model = qwen3_vl(vocab_size=1000, num_layers=1, num_heads=2, num_kv_heads=1, embed_dim=64,
        ...     intermediate_dim=128, head_dim=32, max_seq_len=256, mrope_section=(4, 6, 6), vision_depth=1,
        ...     vision_embed_dim=32, vision_num_heads=2, vision_intermediate_dim=64, vision_deepstack_layers=(0,),
        ...     vision_num_position_embeddings=16)
        >>> model(torch.tensor([[1, 2, 3]])).shape
        torch.Size([1, 3, 1000])
    """
    text_args = {"mrope_section": (24, 20, 20), "rope_base": 5_000_000.0, **text_args}
    tok_embeddings, decoder = qwen2_5_vl_text_decoder(**text_args, qk_norm=True, mrope_interleaved=True)
    visual = qwen3_vl_vision_encoder(
        depth=vision_depth,
        embed_dim=vision_embed_dim,
        num_heads=vision_num_heads,
        intermediate_dim=vision_intermediate_dim,
        out_dim=tok_embeddings.embedding_dim,
        deepstack_layers=vision_deepstack_layers,
        num_position_embeddings=vision_num_position_embeddings,
    )
    return Qwen3VLModel(tok_embeddings=tok_embeddings, decoder=decoder, visual=visual, tokens_per_second=None)


def lora_qwen3_vl(
    lora_attn_modules: Sequence[str],
    apply_lora_to_mlp: bool = False,
    apply_lora_to_output: bool = False,
    **lora_and_model_args: object,
) -> Qwen3VLModel:
    """Build Qwen3-VL with LoRA/DoRA (QLoRA with ``quantize_base``) adapters on chosen language-model projections.

    Args:
        lora_attn_modules, apply_lora_to_mlp, apply_lora_to_output: what to adapt, as in ``lora_qwen2_5_vl``.
        **lora_and_model_args: the adapter arguments of ``lora_qwen2_5_vl`` (``lora_rank``, ``lora_alpha``,
            ``lora_dropout``, ``use_dora``, ``quantize_base``, ``train_vision_tower``, ``train_merger``) and
            the arguments of ``qwen3_vl``. ``train_merger`` trains the merger and the DeepStack mergers.

    Returns:
        Qwen3VLModel with ``LoRALinear`` (or ``DoRALinear``) projections.
    """
    return lora_qwen2_5_vl(
        lora_attn_modules, apply_lora_to_mlp, apply_lora_to_output, build=qwen3_vl, **lora_and_model_args
    )
