"""Qwen2-VL sizes: the numbers of the released checkpoints' config.json files, nothing else.

Sources: transformers 5.24's ``Qwen2VLVisionConfig`` defaults are the released vision tower (depth 32,
embed_dim 1280, mlp_ratio 4, 16 heads, quick_gelu) and its ``Qwen2VLTextConfig`` defaults are the 72B
language model (vocab 152064, hidden 8192, MLP 29568, 80 layers, 64/8 heads), except ``rms_norm_eps``:
the released files say 1e-6, the class default is 1e-5. The 2B and 7B numbers are those of
``config.json`` in Qwen/Qwen2-VL-2B-Instruct and Qwen/Qwen2-VL-7B-Instruct (the 7B's also match the
module shapes transformers prints for it: Embedding(152064, 3584), k_proj 3584->512, MLP 18944). All
released sizes: ``max_position_embeddings`` 32768, ``rope_theta`` 1e6, MRoPE sections [16, 24, 24].
"""

from collections.abc import Sequence

from qwenvl_data._constants import VOCAB_SIZE
from qwenvl_data.models._model import Qwen2_5_VLModel
from qwenvl_data.models._qwen2_vl_component_builders import lora_qwen2_vl, qwen2_vl

_RELEASED_VISION = dict(vision_depth=32, vision_embed_dim=1280, vision_num_heads=16, vision_intermediate_dim=1280 * 4)
_RELEASED_TEXT = dict(max_seq_len=32_768, mrope_section=(16, 24, 24), rope_base=1_000_000.0, norm_eps=1e-6)
# The 2B checkpoint ties its embeddings and has 151936 rows; the larger ones have 152064.
QWEN2_VL_2B = dict(
    vocab_size=VOCAB_SIZE, num_layers=28, num_heads=12, num_kv_heads=2, embed_dim=1536, intermediate_dim=8960,
    tie_word_embeddings=True, **_RELEASED_TEXT, **_RELEASED_VISION,
)  # fmt: skip
QWEN2_VL_7B = dict(
    vocab_size=152064, num_layers=28, num_heads=28, num_kv_heads=4, embed_dim=3584, intermediate_dim=18944,
    **_RELEASED_TEXT, **_RELEASED_VISION,
)  # fmt: skip
QWEN2_VL_72B = dict(
    vocab_size=152064, num_layers=80, num_heads=64, num_kv_heads=8, embed_dim=8192, intermediate_dim=29568,
    **_RELEASED_TEXT, **_RELEASED_VISION,
)  # fmt: skip
# Tiny: the real vocabulary, head_dim 32 (MRoPE sections 4/6/6), 2 decoder layers, a 2-block tower
# (hidden 64, 4 heads, MLP ratio 2).
QWEN2_VL_TINY = dict(
    vocab_size=VOCAB_SIZE, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=128, intermediate_dim=256,
    max_seq_len=32_768, mrope_section=(4, 6, 6), tie_word_embeddings=True,
    vision_depth=2, vision_embed_dim=64, vision_num_heads=4, vision_intermediate_dim=128,
)  # fmt: skip
# Mini: tiny's vocabulary and widths with 4 decoder layers (MLP 512) and a 4-block tower of width 128 (MLP ratio 2),
# the numbers of ``qwen2_5_vl_mini``: the model of configs/tiny_synthetic_qwen2_vl.yaml.
QWEN2_VL_MINI = {
    **QWEN2_VL_TINY, "num_layers": 4, "intermediate_dim": 512,
    "vision_depth": 4, "vision_embed_dim": 128, "vision_intermediate_dim": 256,
}  # fmt: skip


def qwen2_vl_2b() -> Qwen2_5_VLModel:
    """Qwen2-VL-2B (28 layers, hidden 1536, 12/2 heads, tied embeddings), randomly initialized."""
    return qwen2_vl(**QWEN2_VL_2B)


def qwen2_vl_7b() -> Qwen2_5_VLModel:
    """Qwen2-VL-7B (28 layers, hidden 3584, 28/4 heads), randomly initialized."""
    return qwen2_vl(**QWEN2_VL_7B)


def qwen2_vl_72b() -> Qwen2_5_VLModel:
    """Qwen2-VL-72B (80 layers, hidden 8192, 64/8 heads), randomly initialized."""
    return qwen2_vl(**QWEN2_VL_72B)


def qwen2_vl_tiny() -> Qwen2_5_VLModel:
    """A tiny random Qwen2-VL for tests and CPU runs, on the real 151936-token vocabulary.

    Language model: 2 layers, hidden 128, 4 query / 2 key-value heads, MLP 256, MRoPE [4, 6, 6], tied
    embeddings. Vision tower: 2 full-attention blocks, hidden 64, 4 heads, MLP 128, merger to 128.

    Example:
        >>> import torch
        >>> model = qwen2_vl_tiny()
        >>> model(torch.tensor([[151644, 872, 198]])).shape
        torch.Size([1, 3, 151936])
    """
    return qwen2_vl(**QWEN2_VL_TINY)


def qwen2_vl_mini() -> Qwen2_5_VLModel:
    """The model of configs/tiny_synthetic_qwen2_vl.yaml: ``qwen2_vl_tiny`` with 4 decoder layers.

    Language model: 4 layers, hidden 128, 4 query / 2 key-value heads, MLP 512, tied embeddings on the real
    151936-token vocabulary. Vision tower: 4 full-attention blocks, hidden 128, 4 heads, MLP 256, merger to 128.

    Example:
        >>> import torch
        >>> model = qwen2_vl_mini()
        >>> model(torch.tensor([[151644, 872, 198]])).shape
        torch.Size([1, 3, 151936])
    """
    return qwen2_vl(**QWEN2_VL_MINI)


def lora_qwen2_vl_2b(lora_attn_modules: Sequence[str], **lora_args: object) -> Qwen2_5_VLModel:
    """LoRA Qwen2-VL-2B; ``lora_args`` are those of ``lora_qwen2_5_vl`` (lora_rank, lora_alpha, ...)."""
    return lora_qwen2_vl(lora_attn_modules, **lora_args, **QWEN2_VL_2B)


def lora_qwen2_vl_7b(lora_attn_modules: Sequence[str], **lora_args: object) -> Qwen2_5_VLModel:
    """LoRA Qwen2-VL-7B; ``lora_args`` are those of ``lora_qwen2_5_vl``."""
    return lora_qwen2_vl(lora_attn_modules, **lora_args, **QWEN2_VL_7B)


def lora_qwen2_vl_72b(lora_attn_modules: Sequence[str], **lora_args: object) -> Qwen2_5_VLModel:
    """LoRA Qwen2-VL-72B; ``lora_args`` are those of ``lora_qwen2_5_vl``."""
    return lora_qwen2_vl(lora_attn_modules, **lora_args, **QWEN2_VL_72B)


def lora_qwen2_vl_tiny(lora_attn_modules: Sequence[str], **lora_args: object) -> Qwen2_5_VLModel:
    """LoRA on ``qwen2_vl_tiny``; ``lora_args`` are those of ``lora_qwen2_5_vl``."""
    return lora_qwen2_vl(lora_attn_modules, **lora_args, **QWEN2_VL_TINY)
