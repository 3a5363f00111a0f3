"""Sequence packing: several whole samples per row, kept apart by document ids.

Packing fills rows of ``max_seq_len`` with whole samples (first fit, in batch order) so that
short samples do not pay for long padding. Each sample keeps the MRoPE positions it would have
alone (they restart at 0 per sample), and ``document_ids`` tells attention which tokens belong
together: ``packed_attention_mask`` (dense, for SDPA) or ``packed_block_mask`` (flex attention)
let a token attend only to earlier tokens of its own sample.
"""

import torch

from qwenvl_data._constants import IGNORE_INDEX, PAD_ID
from qwenvl_data.collate import CheckedSample, assemble_batch, check_fits, check_samples, pad_rows
from qwenvl_data.errors import SampleError
from qwenvl_data.rope import MODEL_RULE, PositionRule, collator_position_rule, rule_of

__all__ = [
    "Qwen2_5_VLPackedCollator",
    "collate_packed_rows",
    "first_fit_rows",
    "packed_attention_mask",
    "packed_block_mask",
    "packed_collate_qwen2_5_vl",
]


def first_fit_rows(lengths: list[int], max_seq_len: int) -> list[list[int]]:
    """Assign samples to rows: each goes into the first row that still has room for it.

    Args:
        lengths: token count of each sample, all <= ``max_seq_len``.
        max_seq_len: capacity of a row.

    Returns:
        Sample indices per row; within a row in batch order.

    Example:
        >>> first_fit_rows([5, 4, 3, 2], 7)
        [[0, 3], [1, 2]]
    """
    rows: list[list[int]] = []
    room: list[int] = []
    for index, length in enumerate(lengths):
        row = next((r for r, free in enumerate(room) if length <= free), len(rows))
        if row == len(rows):
            rows.append([])
            room.append(max_seq_len)
        rows[row].append(index)
        room[row] -= length
    return rows


def packed_collate_qwen2_5_vl(
    batch: list[dict | None],
    max_seq_len: int,
    tokens_per_second: int | None = MODEL_RULE,
    *,
    position_rule: PositionRule | None = None,
) -> dict[str, torch.Tensor]:
    """Pack tokenized samples into rows of exactly ``max_seq_len`` tokens, never splitting a sample.

    The number of rows B is however many first fit needs for this batch, at most ``len(batch)``.

    Args:
        batch: samples from the text transform; ``None`` entries are dropped.
        max_seq_len: row length; a longer sample raises SampleTooLongError.
        tokens_per_second, position_rule: the family's video position rule, as for ``padded_collate_qwen2_5_vl``.

    Returns:
        The keys of ``padded_collate_qwen2_5_vl`` (right padding, L = max_seq_len; each sample's first
        label is -100, so no shifted target pairs two samples) with
        ``position_ids`` restarting at 0 at every sample, plus
        - ``document_ids``: int64 [B, L], index of the sample inside its row, -1 on padding.
        - ``seq_lens``: int64 [B, max samples per row], each sample's length, 0 past a row's last.
        Vision keys hold the samples' inputs in packed order (row 0's samples, then row 1's, ...).
        ``rope_deltas`` [B, 1] is the sum of each row's samples' own deltas (generation uses unpacked rows).
    """
    samples = check_samples(batch)
    check_fits(samples, max_seq_len)
    rows = first_fit_rows([s.tokens.numel() for s in samples], max_seq_len)
    rule = rule_of(tokens_per_second, position_rule)
    return _assemble_rows([[samples[i] for i in row] for row in rows], max_seq_len, rule)


def collate_packed_rows(
    rows: list[list[dict]],
    max_seq_len: int,
    tokens_per_second: int | None = MODEL_RULE,
    *,
    position_rule: PositionRule | None = None,
) -> dict[str, torch.Tensor]:
    """Collate rows whose samples were already chosen (by ``SamplePacker``), one output row per row.

    Args:
        rows: per row, its samples in order; each row's tokens must fit in ``max_seq_len``.
        max_seq_len: row length.
        tokens_per_second, position_rule: the family's video position rule (see ``packed_collate_qwen2_5_vl``).

    Returns:
        The keys of ``packed_collate_qwen2_5_vl``, with B = ``len(rows)``.

    Raises:
        SampleError: a malformed sample (named by its index in the flattened rows), or a row over
            ``max_seq_len``.
    """
    samples = check_samples([sample for row in rows for sample in row])
    check_fits(samples, max_seq_len)
    packed, start = [], 0
    for row in rows:
        packed.append(samples[start : start + len(row)])
        start += len(row)
        total = sum(s.tokens.numel() for s in packed[-1])
        if total > max_seq_len:
            raise SampleError(f"a packed row of {[s.name for s in packed[-1]]} holds {total} > {max_seq_len} tokens")
    return _assemble_rows(packed, max_seq_len, rule_of(tokens_per_second, position_rule))


def _assemble_rows(
    packed: list[list[CheckedSample]], max_seq_len: int, position_rule: PositionRule | None
) -> dict[str, torch.Tensor]:
    """Concatenate each row's samples, pad to ``max_seq_len``, add document ids, positions and media."""
    ordered = [sample for row in packed for sample in row]
    tokens = pad_rows([torch.cat([s.tokens for s in row]) for row in packed], max_seq_len, PAD_ID)
    document_ids = pad_rows(
        [torch.cat([torch.full_like(s.tokens, doc) for doc, s in enumerate(row)]) for row in packed], max_seq_len, -1
    )
    seq_lens = pad_rows(
        [torch.tensor([s.tokens.numel() for s in row]) for row in packed], max(map(len, packed)), 0
    )
    labels = None
    if ordered[0].labels is not None:
        labels = pad_rows([torch.cat([s.labels for s in row]) for row in packed], max_seq_len, IGNORE_INDEX)
    out = assemble_batch(ordered, tokens, labels, document_ids >= 0, document_ids, position_rule=position_rule)
    out["document_ids"] = document_ids
    out["seq_lens"] = seq_lens
    return out


class Qwen2_5_VLPackedCollator:
    """``packed_collate_qwen2_5_vl`` with ``max_seq_len`` bound, for ``collate_fn`` / YAML ``_component_``.

    Args:
        max_seq_len: length of every packed row.
        tokens_per_second, position_rule: the family's video position rule; left out, the model's family decides
            (see ``Qwen2_5_VLCollator``).
    """

    def __init__(
        self, max_seq_len: int, tokens_per_second: int | None = MODEL_RULE, position_rule: PositionRule = MODEL_RULE
    ) -> None:
        if max_seq_len < 1:
            raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
        self.max_seq_len = max_seq_len
        self.position_rule, self.position_rule_set = collator_position_rule(tokens_per_second, position_rule)

    @property
    def tokens_per_second(self) -> int | None:
        """The rule's ``tokens_per_second`` (the earlier name of the setting)."""
        return self.position_rule.tokens_per_second

    def __call__(self, batch: list[dict | None]) -> dict[str, torch.Tensor]:
        """See ``packed_collate_qwen2_5_vl``."""
        rule = self.position_rule if self.position_rule_set else None  # unset: the samples' family's
        return packed_collate_qwen2_5_vl(batch, self.max_seq_len, position_rule=rule)


def _attends(
    query_doc: torch.Tensor, key_doc: torch.Tensor, query_index: torch.Tensor, key_index: torch.Tensor
) -> torch.Tensor:
    """Block-causal rule shared by the dense mask and the flex mask_mod.

    A token sees earlier tokens of its own sample. A padding token sees only itself, so that no
    softmax row is empty (an all-False row makes SDPA return NaN, which would reach the gradients).
    """
    same_sample = (query_doc == key_doc) & (query_doc >= 0) & (query_index >= key_index)
    return same_sample | (query_index == key_index)


def packed_attention_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """Dense block-causal mask for SDPA from ``document_ids``.

    Args:
        document_ids: int64 [B, L], sample index inside the row, -1 on padding.

    Returns:
        bool [B, 1, L, L], True where the query (dim 2) may attend to the key (dim 3).

    Example:
        >>> packed_attention_mask(torch.tensor([[0, 0, 1, -1]]))[0, 0].int().tolist()
        [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    """
    index = torch.arange(document_ids.shape[1], device=document_ids.device)
    mask = _attends(document_ids[:, :, None], document_ids[:, None, :], index[:, None], index[None, :])
    return mask.unsqueeze(1)


def packed_block_mask(document_ids: torch.Tensor) -> "torch.nn.attention.flex_attention.BlockMask":
    """The same rule as ``packed_attention_mask`` as a flex-attention BlockMask (sparse, no L x L tensor).

    Args:
        document_ids: int64 [B, L] on the device attention will run on.

    Returns:
        BlockMask for ``torch.nn.attention.flex_attention.flex_attention`` (heads broadcast).
    """
    from torch.nn.attention.flex_attention import create_block_mask  # absent from older torch builds

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return _attends(document_ids[b, q], document_ids[b, k], q, k)

    batch_size, seq_len = document_ids.shape
    return create_block_mask(mask_mod, batch_size, None, seq_len, seq_len, device=document_ids.device)
