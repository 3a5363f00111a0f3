"""qwenvl_data: Qwen2.5-VL data pipeline and fine-tuning stack for PyTorch and torchtune.

The data path is importable from here; datasets live in ``qwenvl_data.datasets``, the model in
``qwenvl_data.models`` and the recipe machinery in ``qwenvl_data.training``.
"""

from qwenvl_data._constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from qwenvl_data.collate import Qwen2_5_VLCollator, padded_collate_qwen2_5_vl
from qwenvl_data.errors import (
    ImageLoadError,
    InvalidConversationError,
    PlaceholderMismatchError,
    SampleError,
    SampleTooLongError,
    UnsafePathError,
)
from qwenvl_data.image import Qwen2_5_VLImageTransform, load_image, smart_resize
from qwenvl_data.packing import (
    Qwen2_5_VLPackedCollator,
    packed_attention_mask,
    packed_block_mask,
    packed_collate_qwen2_5_vl,
)
from qwenvl_data.rope import mrope_position_ids
from qwenvl_data.tokenizer import Qwen2_5_VLTokenizer
from qwenvl_data.transform import Qwen2_5_VLTransform
from qwenvl_data.vocab import qwen_vocab_files

__version__ = "0.1.0"

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "ImageLoadError",
    "InvalidConversationError",
    "PlaceholderMismatchError",
    "Qwen2_5_VLCollator",
    "Qwen2_5_VLImageTransform",
    "Qwen2_5_VLPackedCollator",
    "Qwen2_5_VLTokenizer",
    "Qwen2_5_VLTransform",
    "SampleError",
    "SampleTooLongError",
    "UnsafePathError",
    "load_image",
    "mrope_position_ids",
    "packed_attention_mask",
    "packed_block_mask",
    "packed_collate_qwen2_5_vl",
    "padded_collate_qwen2_5_vl",
    "qwen_vocab_files",
    "smart_resize",
]
