"""Answer prompts with Qwen2.5-VL: KV-cached decoding of collated, left-padded prompt batches."""

from qwenvl_data.generation._generate import GenerationOutput, generate
from qwenvl_data.generation._sampling import sample_next_token

__all__ = ["GenerationOutput", "generate", "sample_next_token"]
