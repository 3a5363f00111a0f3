"""Qwen2.5-VL sizes: the numbers of the released checkpoints' config.json files, nothing else."""

from collections.abc import Sequence

from qwenvl_data._constants import VOCAB_SIZE
from qwenvl_data.models._component_builders import lora_qwen2_5_vl, qwen2_5_vl
from qwenvl_data.models._convert_weights import builder_args_from_hf_config
from qwenvl_data.models._model import Qwen2_5_VLModel

# The vision tower and its merger input are the same for every released size.
_RELEASED_VISION = dict(
    vision_depth=32,
    vision_embed_dim=1280,
    vision_num_heads=16,
    vision_intermediate_dim=3420,
    vision_full_attention_layers=(7, 15, 23, 31),
    vision_window_size=112,
)
_RELEASED_TEXT = dict(max_seq_len=128_000, mrope_section=(16, 24, 24), rope_base=1_000_000.0, norm_eps=1e-6)
# The 3B checkpoint ties its embeddings and has 151936 rows; the larger ones have 152064.
QWEN2_5_VL_3B = dict(
    vocab_size=VOCAB_SIZE, num_layers=36, num_heads=16, num_kv_heads=2, embed_dim=2048, intermediate_dim=11008,
    tie_word_embeddings=True, **_RELEASED_TEXT, **_RELEASED_VISION,
)  # fmt: skip
QWEN2_5_VL_7B = dict(
    vocab_size=152064, num_layers=28, num_heads=28, num_kv_heads=4, embed_dim=3584, intermediate_dim=18944,
    **_RELEASED_TEXT, **_RELEASED_VISION,
)  # fmt: skip
QWEN2_5_VL_32B = dict(
    vocab_size=152064, num_layers=64, num_heads=40, num_kv_heads=8, embed_dim=5120, intermediate_dim=27648,
    **_RELEASED_TEXT, **_RELEASED_VISION,
)  # fmt: skip
QWEN2_5_VL_72B = dict(
    vocab_size=152064, num_layers=80, num_heads=64, num_kv_heads=8, embed_dim=8192, intermediate_dim=29568,
    **_RELEASED_TEXT, **_RELEASED_VISION,
)  # fmt: skip
# Tiny: real vocabulary (so real token ids work), everything else as small as the structure allows:
# head_dim 32 (MRoPE sections 4/6/6), 2 decoder layers, a 2-block vision tower with one windowed
# and one full-attention block. About 20M parameters, 19.4M of them the embedding.
QWEN2_5_VL_TINY = dict(
    vocab_size=VOCAB_SIZE, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=128, intermediate_dim=256,
    max_seq_len=32_768, mrope_section=(4, 6, 6), tie_word_embeddings=True,
    vision_depth=2, vision_embed_dim=64, vision_num_heads=4, vision_intermediate_dim=128,
    vision_full_attention_layers=(1,), vision_window_size=112,
)  # fmt: skip

# Mini: tiny's vocabulary and widths with 4 decoder layers (MLP 512) and a 4-block vision tower of width 128, the
# embedded default's model: the vocabulary-sized parts (embedding, output projection, their optimizer state)
# cost the same as tiny's, and those deeper stacks learn the shapes VQA within the CPU demo's budget.
QWEN2_5_VL_MINI = {
    **QWEN2_5_VL_TINY, "num_layers": 4, "intermediate_dim": 512,
    "vision_depth": 4, "vision_embed_dim": 128, "vision_intermediate_dim": 256, "vision_full_attention_layers": (1, 3),
}  # fmt: skip


def qwen2_5_vl_3b() -> Qwen2_5_VLModel:
    """Qwen2.5-VL-3B (36 layers, hidden 2048, 16/2 heads, tied embeddings), randomly initialized."""
    return qwen2_5_vl(**QWEN2_5_VL_3B)


def qwen2_5_vl_7b() -> Qwen2_5_VLModel:
    """Qwen2.5-VL-7B (28 layers, hidden 3584, 28/4 heads), randomly initialized."""
    return qwen2_5_vl(**QWEN2_5_VL_7B)


def qwen2_5_vl_32b() -> Qwen2_5_VLModel:
    """Qwen2.5-VL-32B (64 layers, hidden 5120, 40/8 heads), randomly initialized."""
    return qwen2_5_vl(**QWEN2_5_VL_32B)


def qwen2_5_vl_72b() -> Qwen2_5_VLModel:
    """Qwen2.5-VL-72B (80 layers, hidden 8192, 64/8 heads), randomly initialized."""
    return qwen2_5_vl(**QWEN2_5_VL_72B)


def qwen2_5_vl_tiny() -> Qwen2_5_VLModel:
    """A tiny random Qwen2.5-VL for tests and CPU runs, on the real 151936-token vocabulary.

    Language model: 2 layers, hidden 128, 4 query / 2 key-value heads (head_dim 32), MLP 256,
    MRoPE sections [4, 6, 6], tied embeddings. Vision tower: 2 blocks (block 1 full attention,
    block 0 windowed, window 112 px), hidden 64, 4 heads, MLP 128, merger to 128.

    Example:
        >>> import torch
        >>> model = qwen2_5_vl_tiny()
        >>> model(torch.tensor([[151644, 872, 198]])).shape
        torch.Size([1, 3, 151936])
    """
    return qwen2_5_vl(**QWEN2_5_VL_TINY)


def qwen2_5_vl_mini() -> Qwen2_5_VLModel:
    """The embedded default's model (configs/tiny_synthetic.yaml): ``qwen2_5_vl_tiny`` with 4 decoder layers.

    Language model: 4 layers, hidden 128, 4 query / 2 key-value heads, MLP 512, tied embeddings on the real
    151936-token vocabulary. Vision tower: 4 blocks (1 and 3 full attention, 0 and 2 windowed), hidden 128,
    4 heads, MLP 256, merger to 128. About 21M parameters, 19.4M of them the embedding.

    Example:
        >>> import torch
        >>> model = qwen2_5_vl_mini()
        >>> model(torch.tensor([[151644, 872, 198]])).shape
        torch.Size([1, 3, 151936])
    """
    return qwen2_5_vl(**QWEN2_5_VL_MINI)


def lora_qwen2_5_vl_3b(lora_attn_modules: Sequence[str], **lora_args: object) -> Qwen2_5_VLModel:
    """LoRA Qwen2.5-VL-3B; ``lora_args`` are those of ``lora_qwen2_5_vl`` (lora_rank, lora_alpha, ...)."""
    return lora_qwen2_5_vl(lora_attn_modules, **lora_args, **QWEN2_5_VL_3B)


def lora_qwen2_5_vl_7b(lora_attn_modules: Sequence[str], **lora_args: object) -> Qwen2_5_VLModel:
    """LoRA Qwen2.5-VL-7B; ``lora_args`` are those of ``lora_qwen2_5_vl``."""
    return lora_qwen2_5_vl(lora_attn_modules, **lora_args, **QWEN2_5_VL_7B)


def lora_qwen2_5_vl_32b(lora_attn_modules: Sequence[str], **lora_args: object) -> Qwen2_5_VLModel:
    """LoRA Qwen2.5-VL-32B; ``lora_args`` are those of ``lora_qwen2_5_vl``."""
    return lora_qwen2_5_vl(lora_attn_modules, **lora_args, **QWEN2_5_VL_32B)


def lora_qwen2_5_vl_72b(lora_attn_modules: Sequence[str], **lora_args: object) -> Qwen2_5_VLModel:
    """LoRA Qwen2.5-VL-72B; ``lora_args`` are those of ``lora_qwen2_5_vl``."""
    return lora_qwen2_5_vl(lora_attn_modules, **lora_args, **QWEN2_5_VL_72B)


def lora_qwen2_5_vl_tiny(lora_attn_modules: Sequence[str], **lora_args: object) -> Qwen2_5_VLModel:
    """LoRA on ``qwen2_5_vl_tiny``; ``lora_args`` are those of ``lora_qwen2_5_vl``."""
    return lora_qwen2_5_vl(lora_attn_modules, **lora_args, **QWEN2_5_VL_TINY)


def qwen2_5_vl_from_hf_config(config: dict, **lora_args: object) -> Qwen2_5_VLModel:
    """Build the model an HF ``config.json`` describes (released flat layout or transformers 5.x nested).

    Args:
        config: the parsed ``config.json``.
        **lora_args: when given (at least ``lora_attn_modules``), the arguments of
            ``lora_qwen2_5_vl``, which builds the LoRA variant instead.

    Returns:
        Qwen2_5_VLModel, randomly initialized.
    """
    model_args = builder_args_from_hf_config(config)
    if lora_args:
        return lora_qwen2_5_vl(**lora_args, **model_args)
    return qwen2_5_vl(**model_args)
