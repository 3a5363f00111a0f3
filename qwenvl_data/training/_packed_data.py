"""``dataset.packed: true`` in the recipes: an online packer between the sample stream and collation.

Samples come one at a time from a stateful loader (map-style through its sampler, or a streaming
dataset) and wait in a small buffer; each row starts with the oldest waiting sample and is topped
up with the largest waiting samples that still fit, so rows fill from the whole stream, not from
one batch, and no sample waits more than a buffer's worth of rows. The stream never ends: after
the last sample of a pass the next pass starts (reshuffled by the sampler's epoch), so a packed run
is measured in steps (``max_steps_per_epoch``), not in passes, whose row count packing cannot know
in advance.

Exact resume keeps the state small: where the loader stood before the oldest sample still
waiting (the loader's own state dict), how many samples were pulled since, and which of those
already went into rows. Restoring re-reads those few samples instead of storing them.
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torchdata.stateful_dataloader import StatefulDataLoader

from qwenvl_data.datasets._nodes import PassStarted
from qwenvl_data.datasets._stats import SkippedRecord
from qwenvl_data.errors import sample_name
from qwenvl_data.errors import SampleTooLongError
from qwenvl_data.packing import collate_packed_rows
from qwenvl_data.rope import PositionRule
from qwenvl_data.training._data import Outcomes, rank_sampler
from qwenvl_data.training._refusal import ConfigError
from qwenvl_data.training._skips import SkipLedger
from qwenvl_data.training._stream_loader import sample_loader

DEFAULT_BUFFER_SIZE = 64


@dataclass
class _Pulled:
    """One item of the stream: where the loader stood before it, and the sample (a ``SkippedRecord`` when
    skipped)."""

    offset: int  # position in the stream since the run started
    epoch: int  # the pass it belongs to
    loader_state: dict[str, Any]  # loader.state_dict() just before it was read
    sample: dict | SkippedRecord
    length: int


def split_packing_options(node: DictConfig) -> tuple[DictConfig, int | None]:
    """Strip the packing keys from a ``dataset`` config node before its builder sees them.

    Args:
        node: ``cfg.dataset`` (``packed: true`` is torchtune's switch; ``packed_buffer_size``, default 64,
            is how many samples wait for a row).

    Returns:
        (the node without the packing keys, interpolations resolved; the buffer size when packed, else None)
    """
    container = OmegaConf.to_container(node, resolve=True)
    packed = bool(container.pop("packed", False))
    buffer_size = int(container.pop("packed_buffer_size", DEFAULT_BUFFER_SIZE))
    if buffer_size < 1:
        raise ConfigError(f"dataset.packed_buffer_size must be >= 1, got {buffer_size}")
    return OmegaConf.create(container), buffer_size if packed else None


class PackedBatches:
    """Endless batches of ``rows_per_batch`` packed rows of ``max_seq_len`` tokens, resumable exactly.

    Args:
        loader: yields one transformed sample (or a ``SkippedRecord``) at a time and has
            ``state_dict``/``load_state_dict`` (a ``StatefulDataLoader``, see ``sample_loader``).
        max_seq_len: tokens per row; a longer sample raises SampleTooLongError.
        rows_per_batch: rows per batch (the recipe's ``batch_size``).
        buffer_size: samples waiting for a row; larger fills rows better and holds more samples in memory.
        collate: rows of samples -> batch dict (default ``collate_packed_rows``).
        ledger: counts every record pulled, skipped or not, as the recipes' ``RefillingBatches`` do (records
            re-read by ``load_state_dict`` were counted before the save, and are not again).

    It has the recipes' batch interface (``start_epoch``, ``next_batch``, ``state_dict``; a stream that plans no
    number of batches per pass). Each batch is ``collate_packed_rows``'s dict (``document_ids``, ``seq_lens``, ...).
    """

    def __init__(
        self,
        loader: StatefulDataLoader,
        max_seq_len: int,
        rows_per_batch: int,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        collate: Callable[[list[list[dict]], int], dict[str, torch.Tensor]] = collate_packed_rows,
        ledger: SkipLedger | None = None,
    ) -> None:
        if max_seq_len < 1 or rows_per_batch < 1 or buffer_size < 1:
            raise ValueError(
                f"max_seq_len, rows_per_batch and buffer_size must be >= 1, got {max_seq_len}, {rows_per_batch}, "
                f"{buffer_size}"
            )
        self.loader = loader
        self.max_seq_len = max_seq_len
        self.rows_per_batch = rows_per_batch
        self.buffer_size = buffer_size
        self.collate = collate
        self.ledger = ledger
        self._epoch = 0
        self._iterator = None
        self._offset = 0  # stream items pulled so far
        self._pending: list[_Pulled] = []  # waiting for a row, oldest first
        self._anchor: _Pulled | None = None  # oldest item a restore must re-read
        self._emitted: set[int] = set()  # offsets >= anchor's already in rows (or skipped)
        self._pulled_this_epoch = 0

    def __iter__(self) -> "PackedBatches":
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        return self.collate([self._next_row() for _ in range(self.rows_per_batch)], self.max_seq_len)

    # ---- the recipes' batch interface (``Batches`` in training/_batches.py) --------------------
    stream = True  # runs on across epochs

    def planned_steps(self, grad_accum: int, max_steps_per_epoch: int | None) -> int:
        """``max_steps_per_epoch``: how many rows a pass packs into is only known after packing it.

        Raises:
            ValueError: no ``max_steps_per_epoch``.
        """
        if not max_steps_per_epoch:
            raise ConfigError(
                "dataset.packed=true needs max_steps_per_epoch: how many rows a pass over the data packs into is "
                "only known after packing it, so a packed run counts steps (the packer starts the next pass by itself)"
            )
        return max_steps_per_epoch

    def start_epoch(self, epoch: int, state: dict[str, Any] | None = None) -> None:
        """Continue from ``state_dict()`` when given; the packer starts each pass over the data by itself."""
        if state is not None:
            self.load_state_dict(state)

    def next_batch(self) -> dict[str, torch.Tensor]:
        return next(self)

    @staticmethod
    def sizes(batch: dict[str, torch.Tensor]) -> tuple[int, int]:
        """(samples packed into the rows, tokens of the rows)."""
        return int((batch["seq_lens"] > 0).sum()), batch["tokens"].numel()

    # ---- the stream ---------------------------------------------------------------------------
    def _start_epoch(self, loader_state: dict[str, Any] | None = None) -> None:
        if loader_state is not None:
            self.loader.load_state_dict(loader_state)
        for owner in (getattr(self.loader, "sampler", None), getattr(self.loader, "dataset", None)):
            if hasattr(owner, "set_epoch"):
                owner.set_epoch(self._epoch)
        self._iterator = iter(self.loader)
        self._pulled_this_epoch = 0

    def _pull(self) -> _Pulled:
        """The next stream item, moving on to the next pass at the end of one."""
        while True:
            if self._iterator is None:
                self._start_epoch()
            before = self.loader.state_dict()
            try:
                sample = next(self._iterator)
            except StopIteration:
                if self._pulled_this_epoch == 0:
                    raise ValueError("the dataset yielded no samples in a whole pass: nothing to pack") from None
                self._epoch, self._iterator = self._epoch + 1, None
                if self.ledger is not None:  # said and counted, as a stream's restarts are (PassStarted)
                    self.ledger.record(PassStarted("dataset", self._epoch))
                continue
            self._pulled_this_epoch += 1
            length = len(sample["tokens"]) if isinstance(sample, dict) else 0
            if length > self.max_seq_len:
                raise SampleTooLongError(
                    f"{sample_name(None, sample.get('id'))}: {length} tokens"
                    f" > max_seq_len={self.max_seq_len} (a packed row)"
                )
            item = _Pulled(self._offset, self._epoch, before, sample, length)
            self._offset += 1
            if self._anchor is None:
                self._anchor = item
            return item

    def _fill(self) -> None:
        while len(self._pending) < self.buffer_size:
            item = self._pull()
            if self.ledger is not None:
                self.ledger.record(item.sample)
            if not isinstance(item.sample, dict):  # skipped (counted by the ledger)
                self._emitted.add(item.offset)
                self._advance_anchor(item)
            else:
                self._pending.append(item)

    def _next_row(self) -> list[dict]:
        """The oldest waiting sample, then repeatedly the largest waiting one that still fits."""
        self._fill()
        row = [self._pending.pop(0)]
        room = self.max_seq_len - row[0].length
        while True:
            fitting = [i for i, item in enumerate(self._pending) if item.length <= room]
            if not fitting:
                break
            index = max(fitting, key=lambda i: (self._pending[i].length, -i))
            row.append(self._pending.pop(index))
            room -= row[-1].length
        self._emitted.update(item.offset for item in row)
        self._advance_anchor(max(row, key=lambda item: item.offset))
        return [item.sample for item in row]

    def _advance_anchor(self, newest: _Pulled) -> None:
        """Anchor on the oldest waiting item, or on ``newest`` (just emitted) when none waits.

        Everything from the anchor on is either waiting or emitted, which is what a restore re-reads.
        """
        anchor = self._pending[0] if self._pending else max(newest, self._anchor, key=lambda item: item.offset)
        self._anchor = anchor
        self._emitted = {offset for offset in self._emitted if offset >= anchor.offset}

    # ---- resume -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Small and tensor-free: the loader state before the oldest item to re-read, and offsets."""
        if self._anchor is None:
            return {"offset": 0}
        start = self._anchor.offset
        return {
            "offset": self._offset,
            "anchor_offset": start,
            "anchor_epoch": self._anchor.epoch,
            "anchor_loader": self._anchor.loader_state,
            "emitted": sorted(offset - start for offset in self._emitted),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where ``state_dict`` was taken: re-read the waiting samples, skip the emitted."""
        self._pending, self._emitted, self._anchor, self._iterator = [], set(), None, None
        self._offset, self._epoch = 0, 0
        if "anchor_offset" not in state:
            return
        start = state["anchor_offset"]
        self._epoch, self._offset = state["anchor_epoch"], start
        self._start_epoch(state["anchor_loader"])
        emitted = {start + relative for relative in state["emitted"]}
        while self._offset < state["offset"]:
            item = self._pull()
            if item.offset in emitted:
                self._emitted.add(item.offset)
            else:
                self._pending.append(item)


def packed_batches(
    dataset: Any,
    transform: Any,
    batch_size: int,
    *,
    buffer_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    ledger: SkipLedger | None = None,
    position_rule: PositionRule,
) -> PackedBatches:
    """The recipes' batches for ``dataset.packed: true``: rows of ``transform.max_seq_len`` tokens.

    Map-style datasets are read through a DistributedSampler (this rank's share, reshuffled each
    pass); an IterableDataset (streaming) is read as it shards itself. ``position_rule`` is the model's family's video
    position rule (``ModelFamily.position_rule``).

    Raises:
        ValueError: no ``tokenizer.max_seq_len`` (the row length).
    """
    max_seq_len = getattr(transform, "max_seq_len", None)
    if not max_seq_len:
        raise ConfigError("dataset.packed=true packs rows of tokenizer.max_seq_len tokens: set tokenizer.max_seq_len")
    sampler = None
    if isinstance(dataset, torch.utils.data.IterableDataset):
        dataset.keep_skipped = True  # skipped records reach the ledger
    else:
        dataset = Outcomes(dataset)
        sampler = rank_sampler(dataset, shuffle, seed)
    return PackedBatches(
        sample_loader(dataset, sampler, num_workers), int(max_seq_len), batch_size, buffer_size,
        collate=functools.partial(collate_packed_rows, position_rule=position_rule), ledger=ledger,
    )  # fmt: skip
