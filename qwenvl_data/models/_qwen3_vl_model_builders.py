"""Qwen3-VL (dense) sizes: the numbers of the released Qwen/Qwen3-VL-{2B,4B,8B,32B}-Instruct config.json files.

Sources (no network here, so each number was cross-checked where it could be):
- Shared by all four: vocab_size 151936, head_dim 128, max_position_embeddings 262144, rope_theta 5e6,
  rope_scaling {mrope_interleaved: true, mrope_section [24, 20, 20]}, rms_norm_eps 1e-6, no attention bias;
  vision patch 16, temporal patch 2, merge 2, num_position_embeddings 2304, 16 heads, gelu_pytorch_tanh.
  transformers 5.24's ``Qwen3VLVisionConfig`` defaults are the 8B/32B tower (depth 27, hidden 1152, MLP 4304,
  DeepStack [8, 16, 24]); its ``Qwen3VLTextConfig`` defaults are not a released size (hidden 4096, MLP 22016,
  32/32 heads, theta 5e5).
- 4B: copies of its config.json in public code (hidden 2560, MLP 9728, 36 layers, 32/8 heads, tied; tower
  depth 24, hidden 1024, MLP 4096, DeepStack [5, 11, 17]).
- 8B: public copies give hidden 4096, MLP 12288, 36 layers, 32/8 heads, untied; the 27-block tower.
- 32B: a public copy of its config.json: hidden 5120, MLP 25600, 64 layers, 64/8 heads, untied; the 27-block tower.
- 2B: 28 layers, hidden 2048, 16/8 heads and the 24-block tower from a public dump of its loaded config;
  MLP 6144 and tied embeddings are those of Qwen3-1.7B, its language model, and could not be confirmed
  against the 2B's own config.json here.
"""

from collections.abc import Sequence

from qwenvl_data._constants import VOCAB_SIZE
from qwenvl_data.models._qwen3_vl_component_builders import lora_qwen3_vl, qwen3_vl
from qwenvl_data.models._qwen3_vl_model import Qwen3VLModel

_RELEASED_TEXT = dict(
    vocab_size=VOCAB_SIZE, head_dim=128, max_seq_len=262_144, mrope_section=(24, 20, 20), rope_base=5_000_000.0,
    norm_eps=1e-6,
)  # fmt: skip
# The 2B/4B tower and the 8B/32B tower.
_SMALL_VISION = dict(
    vision_depth=24, vision_embed_dim=1024, vision_num_heads=16, vision_intermediate_dim=4096,
    vision_deepstack_layers=(5, 11, 17), vision_num_position_embeddings=2304,
)  # fmt: skip
_LARGE_VISION = dict(
    vision_depth=27, vision_embed_dim=1152, vision_num_heads=16, vision_intermediate_dim=4304,
    vision_deepstack_layers=(8, 16, 24), vision_num_position_embeddings=2304,
)  # fmt: skip
QWEN3_VL_2B = dict(
    num_layers=28, num_heads=16, num_kv_heads=8, embed_dim=2048, intermediate_dim=6144, tie_word_embeddings=True,
    **_RELEASED_TEXT, **_SMALL_VISION,
)  # fmt: skip
QWEN3_VL_4B = dict(
    num_layers=36, num_heads=32, num_kv_heads=8, embed_dim=2560, intermediate_dim=9728, tie_word_embeddings=True,
    **_RELEASED_TEXT, **_SMALL_VISION,
)  # fmt: skip
QWEN3_VL_8B = dict(
    num_layers=36, num_heads=32, num_kv_heads=8, embed_dim=4096, intermediate_dim=12288,
    **_RELEASED_TEXT, **_LARGE_VISION,
)  # fmt: skip
QWEN3_VL_32B = dict(
    num_layers=64, num_heads=64, num_kv_heads=8, embed_dim=5120, intermediate_dim=25600,
    **_RELEASED_TEXT, **_LARGE_VISION,
)  # fmt: skip
# Tiny: the real vocabulary; head_dim 48 (not hidden / heads, as in the released sizes) with interleaved MRoPE
# sections [10, 7, 7]; 2 decoder layers; a 3-block tower (hidden 64, 4 heads) with DeepStack after blocks 0
# and 1 and an 8 x 8 position table, so that frames both smaller and larger than it are interpolated.
QWEN3_VL_TINY = dict(
    vocab_size=VOCAB_SIZE, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=128, intermediate_dim=256,
    head_dim=48, max_seq_len=32_768, mrope_section=(10, 7, 7), rope_base=5_000_000.0, tie_word_embeddings=True,
    vision_depth=3, vision_embed_dim=64, vision_num_heads=4, vision_intermediate_dim=128,
    vision_deepstack_layers=(0, 1), vision_num_position_embeddings=64,
)  # fmt: skip


def qwen3_vl_2b() -> Qwen3VLModel:
    """Qwen3-VL-2B (28 layers, hidden 2048, 16/8 heads, tied embeddings; 24-block tower), randomly initialized."""
    return qwen3_vl(**QWEN3_VL_2B)


def qwen3_vl_4b() -> Qwen3VLModel:
    """Qwen3-VL-4B (36 layers, hidden 2560, 32/8 heads, tied embeddings; 24-block tower), randomly initialized."""
    return qwen3_vl(**QWEN3_VL_4B)


def qwen3_vl_8b() -> Qwen3VLModel:
    """Qwen3-VL-8B (36 layers, hidden 4096, 32/8 heads; 27-block tower), randomly initialized."""
    return qwen3_vl(**QWEN3_VL_8B)


def qwen3_vl_32b() -> Qwen3VLModel:
    """Qwen3-VL-32B (64 layers, hidden 5120, 64/8 heads; 27-block tower), randomly initialized."""
    return qwen3_vl(**QWEN3_VL_32B)


def qwen3_vl_tiny() -> Qwen3VLModel:
    """A tiny random Qwen3-VL for tests and CPU runs, on the real 151936-token vocabulary.

    Language model: 2 layers, hidden 128, 4 query / 2 key-value heads of head_dim 48, MLP 256, interleaved
    MRoPE [10, 7, 7], tied embeddings. Vision tower: 3 blocks, hidden 64, 4 heads, MLP 128, an 8 x 8 learned
    position table, DeepStack after blocks 0 and 1 (added after decoder layers 0 and 1), mergers to 128.

    Example:
        >>> import torch
        >>> model = qwen3_vl_tiny()
        >>> model(torch.tensor([[151644, 872, 198]])).shape
        torch.Size([1, 3, 151936])
    """
    return qwen3_vl(**QWEN3_VL_TINY)


def lora_qwen3_vl_2b(lora_attn_modules: Sequence[str], **lora_args: object) -> Qwen3VLModel:
    """LoRA Qwen3-VL-2B; ``lora_args`` are those of ``lora_qwen2_5_vl`` (lora_rank, lora_alpha, ...)."""
    return lora_qwen3_vl(lora_attn_modules, **lora_args, **QWEN3_VL_2B)


def lora_qwen3_vl_4b(lora_attn_modules: Sequence[str], **lora_args: object) -> Qwen3VLModel:
    """LoRA Qwen3-VL-4B; ``lora_args`` are those of ``lora_qwen2_5_vl``."""
    return lora_qwen3_vl(lora_attn_modules, **lora_args, **QWEN3_VL_4B)


def lora_qwen3_vl_8b(lora_attn_modules: Sequence[str], **lora_args: object) -> Qwen3VLModel:
    """LoRA Qwen3-VL-8B; ``lora_args`` are those of ``lora_qwen2_5_vl``."""
    return lora_qwen3_vl(lora_attn_modules, **lora_args, **QWEN3_VL_8B)


def lora_qwen3_vl_32b(lora_attn_modules: Sequence[str], **lora_args: object) -> Qwen3VLModel:
    """LoRA Qwen3-VL-32B; ``lora_args`` are those of ``lora_qwen2_5_vl``."""
    return lora_qwen3_vl(lora_attn_modules, **lora_args, **QWEN3_VL_32B)


def lora_qwen3_vl_tiny(lora_attn_modules: Sequence[str], **lora_args: object) -> Qwen3VLModel:
    """LoRA on ``qwen3_vl_tiny``; ``lora_args`` are those of ``lora_qwen2_5_vl``."""
    return lora_qwen3_vl(lora_attn_modules, **lora_args, **QWEN3_VL_TINY)
