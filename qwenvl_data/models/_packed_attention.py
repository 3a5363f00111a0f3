"""Attention over packed rows that never computes the blocks between two samples.

A dense [B, L, L] mask makes SDPA score every query against every key of the row and throw most
of them away. Two kernels skip them instead: flex attention with a ``BlockMask`` (GPUs, compiled
by torchtune) and, elsewhere, "varlen" SDPA: causal SDPA on each sample's own slice of the row.
Both give what the dense ``packed_attention_mask`` gives, padding included (a padding token
attends to itself only, so its output is its own value vector).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchtune.modules import MultiHeadAttention
from torchtune.utils._import_guard import _SUPPORTS_FLEX_ATTENTION

from qwenvl_data.packing import packed_block_mask

AttentionCall = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class PackedRows:
    """The varlen layout of packed rows: per row, the lengths of its samples, in order, then padding.

    Passed as the decoder's ``mask``; attention modules wrapped by ``packed_aware`` read it.
    """

    seq_lens: tuple[tuple[int, ...], ...]

    @classmethod
    def from_document_ids(cls, document_ids: torch.Tensor) -> "PackedRows":
        """Args: document_ids: int64 [B, L], sample index inside the row (contiguous), -1 on padding."""
        rows = []
        for row in document_ids.cpu():
            _, counts = torch.unique_consecutive(row[row >= 0], return_counts=True)
            rows.append(tuple(counts.tolist()))
        return cls(tuple(rows))


@torch.compiler.disable  # Python loop over data-dependent lengths: one graph per layout otherwise
def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: PackedRows, dropout_p: float) -> torch.Tensor:
    """Causal SDPA on each sample's slice of each row; padding positions return their own values.

    Args:
        q, k, v: [B, H, L, D] (keys/values already expanded to the query heads).
        rows: the samples' lengths per row.
        dropout_p: attention dropout.

    Returns:
        [B, H, L, D], as SDPA with ``packed_attention_mask`` gives.
    """
    outputs = []
    for index, lengths in enumerate(rows.seq_lens):
        pieces, start = [], 0
        for length in lengths:
            span = slice(start, start + length)
            pieces.append(
                F.scaled_dot_product_attention(
                    q[index : index + 1, :, span], k[index : index + 1, :, span], v[index : index + 1, :, span],
                    dropout_p=dropout_p, is_causal=True,
                )  # fmt: skip
            )
            start += length
        pieces.append(v[index : index + 1, :, start:])
        outputs.append(torch.cat(pieces, dim=2))
    return torch.cat(outputs)


def packed_aware(attention_call: AttentionCall) -> AttentionCall:
    """torchtune's attention call, extended to ``PackedRows`` (varlen SDPA) and ``BlockMask`` on any device."""
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    def call(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: object, dropout_p: float, is_causal: bool
    ) -> torch.Tensor:
        if isinstance(mask, PackedRows):
            return varlen_attention(q, k, v, mask, dropout_p)
        if isinstance(mask, BlockMask) and not _SUPPORTS_FLEX_ATTENTION:
            # torchtune only routes BlockMasks to (compiled) flex attention on recent GPUs; elsewhere, eager flex.
            if dropout_p > 0.0:
                raise ValueError("flex attention has no dropout; set attn_dropout to 0 for packed batches")
            return flex_attention(q, k, v, block_mask=mask)
        return attention_call(q, k, v, mask=mask, dropout_p=dropout_p, is_causal=is_causal)

    return call


def make_packed_aware(module: torch.nn.Module) -> None:
    """Wrap the attention call of every torchtune ``MultiHeadAttention`` under ``module``."""
    for attention in module.modules():
        if isinstance(attention, MultiHeadAttention):
            attention._attention_call = packed_aware(attention._attention_call)


def packed_mask(document_ids: torch.Tensor) -> "PackedRows | torch.nn.attention.flex_attention.BlockMask":
    """The default fast layout for packed rows: a BlockMask where torchtune compiles flex attention
    (CUDA, sm75+), else ``PackedRows`` for varlen SDPA (CPU: no compile step, and faster than eager flex)."""
    if document_ids.is_cuda and _SUPPORTS_FLEX_ATTENTION:
        return packed_block_mask(document_ids)
    return PackedRows.from_document_ids(document_ids)
