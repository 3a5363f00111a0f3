"""Next-token cross-entropy on collator labels, summed so that ranks and micro-batches add up exactly."""

import torch
import torch.nn.functional as F
from torch import nn

from qwenvl_data._constants import IGNORE_INDEX


class NextTokenCrossEntropy(nn.Module):
    """Cross-entropy of logits at position i against the label at i + 1, summed over trained tokens.

    The collator's labels are aligned with the tokens (HF convention), so the shift happens here.
    The loss is a SUM: the recipe divides by the number of trained tokens of the whole global
    batch (all micro-batches and all ranks), which makes gradient accumulation and FSDP give the
    same loss as one big batch. Only trained positions are upcast to float32, a chunk at a time,
    so a 151,936-way vocabulary never needs a float32 copy of the whole [B, L, V] tensor.

    Args:
        chunk_size: trained positions per float32 upcast chunk.
        ignore_index: label value that is not trained.
    """

    def __init__(self, chunk_size: int = 1024, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.chunk_size = chunk_size
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """
        Args:
            logits: float [B, L, V]
            labels: int64 [B, L], ignore_index where not trained
        Returns:
            float32 scalar: summed loss over the trained (shifted) positions.
        """
        targets = labels[:, 1:]
        trained = targets != self.ignore_index
        # Only trained positions are gathered and upcast: with answer-only labels that is a few
        # percent of the [B, L, V] logits.
        trained_logits = logits[:, :-1][trained]
        trained_targets = targets[trained]
        total = logits.new_zeros((), dtype=torch.float32)
        for start in range(0, trained_targets.numel(), self.chunk_size):
            chunk = slice(start, start + self.chunk_size)
            total = total + F.cross_entropy(trained_logits[chunk].float(), trained_targets[chunk], reduction="sum")
        return total

    def num_trained_tokens(self, labels: torch.Tensor) -> torch.Tensor:
        """int64 scalar: how many positions forward() sums over."""
        return (labels[:, 1:] != self.ignore_index).sum()
