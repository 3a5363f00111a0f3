"""Next-token cross-entropy on the trained positions only, with the output projection run in chunks.

With answer-only labels a few percent of the positions are trained, and the 151,936-way output
projection dominates the cost and memory of a step. The recipe therefore never asks the model for
logits while training: `output_loss` makes the model's forward end in the loss component, which
receives the final hidden states of the trained rows and the output projection, and projects them
a chunk of rows at a time (the idea of torchtune's ``CEWithChunkedOutputLoss``, taken further: the
gradient of each chunk is formed while its logits exist, so no [rows, vocab] tensor is ever held
whole, in the forward or the backward).

Loss contract (what the recipe passes, for anyone writing a `loss._component_` of their own):
``loss_fn(hidden, output, targets) -> float32 scalar``, called inside the model's forward (so an
FSDP2-sharded output weight is gathered), where ``hidden`` is float [N, dim], the final-norm
hidden states of the N positions whose next token is trained, ``output`` is the decoder's output
projection (a callable [*, dim] -> [*, vocab]; ``nn.Linear`` or torchtune's ``TiedLinear``, or an
adapted module under LoRA), and ``targets`` is int64 [N]. It returns the SUM over the N positions:
the recipe divides by the trained tokens of the whole global batch.
"""

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchtune.modules import TiedLinear

from qwenvl_data._constants import IGNORE_INDEX
from qwenvl_data.models._model import project_rows

OutputLoss = Callable[[torch.Tensor, Callable[[torch.Tensor], torch.Tensor], torch.Tensor], torch.Tensor]


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


@contextmanager
def output_loss(model: nn.Module, rows: torch.Tensor, targets: torch.Tensor, loss_fn: OutputLoss) -> Iterator[None]:
    """Within the block, `model(**batch)` returns ``loss_fn``'s float32 scalar instead of logits.

    The decoder's unembedding step (final norm, then output projection) is replaced for the
    duration by: final norm, keep the `rows` positions, ``loss_fn(hidden, decoder.output, targets)``.
    It runs inside the model's forward, where FSDP2 has gathered the output weight.

    Args:
        model: a Qwen2_5_VLModel.
        rows: bool [B, L] and targets: int64 [N] from `trained_rows`.
        loss_fn: a loss with the contract in this module's docstring.
    """
    decoder = model.decoder

    def unembed(hidden: torch.Tensor) -> torch.Tensor:
        return loss_fn(decoder.norm(hidden)[rows], decoder.output, targets)

    decoder.unembed = unembed  # an instance attribute shadows TransformerDecoder.unembed
    try:
        yield
    finally:
        del decoder.unembed


def check_loss_contract(loss_fn: Any, component: str) -> None:
    """Refuse, before training, a loss that cannot be called as this module's contract says.

    torchtune's and torch's losses take (logits, labels): they would fail only at the first step.

    Raises:
        ValueError: naming the component, its signature and the contract.
    """
    target = loss_fn.forward if isinstance(loss_fn, nn.Module) else loss_fn
    try:
        signature = inspect.signature(target)
        signature.bind(None, None, None)
    except TypeError:
        raise ValueError(
            f"config key `loss` ({component}) takes {signature}: the recipes call a loss as loss_fn(hidden "
            f"[N, dim], output_projection, targets [N]) inside the model's forward and expect the summed loss "
            f"(see qwenvl_data.training.NextTokenCrossEntropy, which runs the output projection in chunks)"
        ) from None
    except ValueError:  # a builtin without an inspectable signature: the first step will tell
        pass


def _plain_weight(output: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor | None:
    """The [vocab, dim] weight when the projection is exactly ``hidden @ weight.T``, else None."""
    if isinstance(output, TiedLinear):
        return output.tied_module.weight
    if type(output) is nn.Linear and output.bias is None:
        return output.weight
    return None


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T``, a chunk of rows at a time.

    d loss / d logits = softmax(logits) - onehot(target) is formed per chunk in the forward and
    folded straight into the input and weight gradients, so the backward only scales them: the
    peak is one [chunk, vocab] float32 block, and the step does the same three matmuls as an
    unchunked projection. Logits are upcast to float32 per chunk.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int, with_grad: bool
    ) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if with_grad else None
        grad_weight = None
        for start in range(0, targets.numel(), chunk_size):
            chunk = slice(start, start + chunk_size)
            rows, target = hidden[chunk], targets[chunk]
            logits = (rows @ weight.T).float()
            # log-sum-exp by hand: its exponentials are the softmax the gradient needs, so the [chunk, vocab]
            # block is passed over once per operation and never copied.
            total -= logits.gather(1, target[:, None]).sum()
            peak = logits.amax(dim=1, keepdim=True)
            exponentials = logits.sub_(peak).exp_()
            sums = exponentials.sum(dim=1, keepdim=True)
            total += (peak + sums.log()).sum()
            if with_grad:
                grad_logits = exponentials.div_(sums)  # softmax
                grad_logits[torch.arange(target.numel(), device=target.device), target] -= 1
                grad_logits = grad_logits.to(hidden.dtype)
                grad_hidden[chunk] = grad_logits @ weight
                part = grad_logits.T @ rows
                grad_weight = part.float() if grad_weight is None else grad_weight.add_(part)
            del logits, exponentials
        if with_grad and grad_weight is None:  # no trained rows
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        # Held on ctx, not saved: the backward scales them in place and hands them over (a saved tensor
        # would be copied, 4 bytes x vocab x dim, by the weight's gradient accumulation).
        ctx.gradients = (grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        grad_hidden, grad_weight = ctx.gradients
        if grad_hidden is None:
            raise RuntimeError(
                "the chunked cross-entropy has no gradients to give: it ran without them (under no_grad) or "
                "its backward already ran (retain_graph is not supported)"
            )
        ctx.gradients = (None, None)
        return grad_hidden.mul_(grad_total), grad_weight.mul_(grad_total).to(ctx.weight_dtype), None, None, None


class NextTokenCrossEntropy(nn.Module):
    """Cross-entropy summed over trained positions, the output projection run `chunk_size` rows at a time.

    Contract: see this module's docstring (hidden states of the trained rows, the output
    projection, targets -> the summed loss). Equal to
    ``F.cross_entropy(output(hidden).float(), targets, reduction="sum")`` and to its gradients
    (float32: within 1e-5 relative), without the [N, vocab] logits ever existing at once.
    A bias-free ``nn.Linear`` or tied projection takes the fused path of `_LinearCrossEntropy`;
    any other projection (LoRA on the output layer) is evaluated per chunk under activation
    checkpointing, recomputing one chunk's logits in the backward.

    Args:
        chunk_size: rows projected at once; peak extra memory is about chunk_size x vocab x 4 bytes
            (1024 rows x 151,936 = 0.6 GB).
    """

    def __init__(self, chunk_size: int = 1024) -> None:
        super().__init__()
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = chunk_size

    def forward(
        self, hidden: torch.Tensor, output: Callable[[torch.Tensor], torch.Tensor], targets: torch.Tensor
    ) -> torch.Tensor:
        """
        Args:
            hidden: float [N, dim], final-norm hidden states of the positions whose next token is trained.
            output: the output projection, [*, dim] -> [*, vocab].
            targets: int64 [N], the token each row should predict.
        Returns:
            float32 scalar: the summed loss.
        """
        weight = _plain_weight(output)
        if weight is not None:
            with_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
            return _LinearCrossEntropy.apply(hidden, weight, targets, self.chunk_size, with_grad)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, targets.numel(), self.chunk_size):
            chunk = slice(start, start + self.chunk_size)
            total = total + checkpoint(_projected_loss, output, hidden[chunk], targets[chunk], use_reentrant=False)
        return total


def _projected_loss(output: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, targets: torch.Tensor):
    return F.cross_entropy(output(hidden).float(), targets, reduction="sum")
