"""Next-token cross-entropy on the trained positions only, summed so that ranks and micro-batches add up.

With answer-only labels a few percent of the positions are trained, and the 151,936-way output
projection dominates the cost of a step; `project_trained_rows` makes the model project only the
rows the loss reads, so those logits are all that is ever computed.
"""

import torch
import torch.nn.functional as F
from torch import nn

from qwenvl_data._constants import IGNORE_INDEX
from qwenvl_data.models._model import project_rows


def trained_rows(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """Which positions predict a trained token, and those tokens.

    The collator's labels are aligned with the tokens (HF convention): position i predicts label i + 1.

    Args:
        labels: int64 [B, L], ignore_index where not trained.

    Returns:
        (rows: bool [B, L], True at positions whose next label is trained;
         targets: int64 [N], those labels in row-major order, N = rows.sum())
    """
    rows = torch.zeros_like(labels, dtype=torch.bool)
    rows[:, :-1] = labels[:, 1:] != ignore_index
    return rows, labels[:, 1:][rows[:, :-1]]


# The model projects only the rows the loss reads (the hook lives with the model, which generation shares).
project_trained_rows = project_rows


class NextTokenCrossEntropy(nn.Module):
    """Cross-entropy summed over trained positions (logits from `project_trained_rows`).

    The loss is a SUM: the recipe divides by the number of trained tokens of the whole global
    batch (all micro-batches and all ranks), which makes gradient accumulation and FSDP give the
    same loss as one big batch. Logits are upcast to float32 a chunk of rows at a time.

    Args:
        chunk_size: rows per float32 upcast chunk.
    """

    def __init__(self, chunk_size: int = 1024) -> None:
        super().__init__()
        self.chunk_size = chunk_size

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """
        Args:
            logits: float [N, V], one row per trained position.
            targets: int64 [N], the token each row should predict.
        Returns:
            float32 scalar: the summed loss.
        """
        total = logits.new_zeros((), dtype=torch.float32)
        for start in range(0, targets.numel(), self.chunk_size):
            chunk = slice(start, start + self.chunk_size)
            total = total + F.cross_entropy(logits[chunk].float(), targets[chunk], reduction="sum")
        return total
