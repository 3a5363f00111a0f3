"""The streaming pipeline as ``torchdata.nodes``: a node of one reader's raw records, the sample processor as a
(parallel) map, and a node that drops skipped samples; plus ``ReaderNodeDataset``, the ``IterableDataset`` view
that runs one such graph per reader (rank x DataLoader worker) with ``state_dict()`` / ``load_state_dict()``.
"""

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info
from torchdata.nodes import BaseNode

from qwenvl_data.datasets._distributed import rank_and_world_size
from qwenvl_data.datasets._processing import SkippedRecord
from qwenvl_data.datasets._shard_stream import ShardStream
from qwenvl_data.datasets._shards import Shard
from qwenvl_data.datasets._stats import MIXTURE_SOURCE_KEY, SkipCounts

logger = logging.getLogger(__name__)


class ShardRecordNode(BaseNode[tuple[str, Any]]):
    """One reader's raw records, ``(label, record)``, through a seeded shuffle buffer (see ``ShardStream``).

    Each ``reset()`` without a state starts the next epoch (a new shuffle order), as torchdata's samplers do.

    Args:
        shards: the whole corpus. reader, num_readers: this reader's place.
        seed: shuffle seed. shuffle_buffer_size: buffer length (1 = file order).
        epoch: the first epoch.
    """

    def __init__(
        self, shards: Sequence[Shard], reader: int, num_readers: int, *, seed: int, shuffle_buffer_size: int, epoch: int
    ) -> None:
        super().__init__()
        self.stream = ShardStream(shards, reader, num_readers, seed, shuffle_buffer_size, epoch)
        self._next_epoch = epoch

    def reset(self, initial_state: dict | None = None) -> None:
        super().reset(initial_state)
        if initial_state is None:
            self.stream.start_epoch(self._next_epoch)
        else:
            self.stream.load(initial_state)
        self._next_epoch = self.stream.epoch + 1

    def next(self) -> tuple[str, Any]:
        return next(self.stream)

    def get_state(self) -> dict[str, Any]:
        return self.stream.state()


@dataclass(frozen=True)
class PassStarted:
    """What a reader's stream yields, instead of a sample, when it starts reading its data again (pass ``number``,
    counted from 1 for the second pass) without being asked to (a mixture, or the recipes' endless stream, that
    runs out of records): the training loop counts these, so that repeated reading is seen, never silent.

    Args:
        dataset: which dataset (``"dataset[1]"`` in a mixture, ``"dataset"`` alone).
        number: passes started again so far by this reader.
    """

    dataset: str
    number: int


def drawn_from(name: str, outcome: Any) -> Any:
    """``outcome`` naming the dataset ``name`` of a mixture it was drawn from: a sample (a shallow copy) under
    ``MIXTURE_SOURCE_KEY``, a ``SkippedRecord`` as its ``source``; a ``PassStarted`` names its dataset already."""
    if isinstance(outcome, dict):
        return {**outcome, MIXTURE_SOURCE_KEY: name}
    if isinstance(outcome, SkippedRecord):
        return dataclasses.replace(outcome, source=name)
    return outcome


class DropSkipped(BaseNode[dict]):
    """Passes samples through and drops skipped records (``SkippedRecord`` or None); logs ``stats`` (if given)
    at epoch end. ``keep_skipped=True`` passes ``SkippedRecord`` s through instead, for a training loop that
    counts and reports them (the recipes), and, each time the node is reset to start its data again (not to
    resume), first a ``PassStarted`` naming ``name``; otherwise those markers are dropped too. With
    ``names_outcomes`` (a mixture's dataset read by the recipes) each outcome also names ``name``
    (``drawn_from``)."""

    SOURCE_KEY = "source"
    PASSES_KEY = "passes_started"
    names_outcomes: bool = False

    def __init__(
        self, source: BaseNode, stats: SkipCounts | None = None, keep_skipped: bool = False, name: str = "dataset"
    ) -> None:
        super().__init__()
        self.source, self.stats, self.keep_skipped, self.name = source, stats, keep_skipped, name
        self.passes_started, self._announce, self._reset_before = 0, False, False

    def reset(self, initial_state: dict | None = None) -> None:
        super().reset(initial_state)
        self.source.reset(None if initial_state is None else initial_state[self.SOURCE_KEY])
        if initial_state is not None:
            self.passes_started, self._announce = int(initial_state.get(self.PASSES_KEY, 0)), False
        elif self._reset_before:  # the data starts again, not for the first time
            self.passes_started, self._announce = self.passes_started + 1, True
        self._reset_before = True

    def next(self) -> dict | SkippedRecord | PassStarted:
        if self._announce:
            self._announce = False
            if self.keep_skipped:
                return PassStarted(self.name, self.passes_started)
        while True:
            try:
                sample = next(self.source)
            except StopIteration:
                if self.stats is not None:
                    logger.info("epoch finished; dataset %s", self.stats.summary())
                raise
            if sample is None or (isinstance(sample, (SkippedRecord, PassStarted)) and not self.keep_skipped):
                continue
            return drawn_from(self.name, sample) if self.names_outcomes else sample

    def get_state(self) -> dict[str, Any]:
        return {self.SOURCE_KEY: self.source.state_dict(), self.PASSES_KEY: self.passes_started}


def reader_place(rank: int, world_size: int) -> tuple[int, int]:
    """``(reader, num_readers)`` of the calling DataLoader worker: ``rank * num_workers + worker_id`` of
    ``world_size * num_workers`` (the main process counts as the only worker)."""
    info = get_worker_info()
    worker_id, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
    return rank * num_workers + worker_id, world_size * num_workers


class ReaderNodeDataset(IterableDataset):
    """An ``IterableDataset`` that runs, in each DataLoader worker, the node graph of that worker's reader.

    Subclasses build the graph in ``reader_node(reader, num_readers)``. ``state_dict()`` is the graph's state
    in this process (each DataLoader worker has its own, which ``StatefulDataLoader`` collects);
    ``load_state_dict()`` continues exactly there at the next ``iter()``.

    Args:
        rank, world_size: this process's place; default from ``torch.distributed`` (or 0 of 1).
    """

    #: True: skipped records come out as ``SkippedRecord`` (the recipes count them); False: they are dropped.
    keep_skipped: bool = False

    def __init__(self, rank: int | None, world_size: int | None) -> None:
        self.rank, self.world_size = rank_and_world_size(rank, world_size)
        self._node: BaseNode | None = None
        self._resume_state: dict[str, Any] | None = None

    def reader_node(self, reader: int, num_readers: int) -> BaseNode:
        raise NotImplementedError

    def _start(self) -> BaseNode:
        """This reader's graph, reset to the resume state if one was loaded, else to a fresh start."""
        node = self._node = self.reader_node(*reader_place(self.rank, self.world_size))
        node.reset(self._resume_state)
        self._resume_state = None
        return node

    def __iter__(self) -> Any:
        return self._start()

    def state_dict(self) -> dict[str, Any]:
        """The position of this process's reader (positions and counters only, no data)."""
        if self._node is not None:
            return self._node.state_dict()
        return dict(self._resume_state) if self._resume_state is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from ``state_dict()`` at the next ``iter()`` (an empty state starts afresh)."""
        self._resume_state = dict(state_dict) or None
        self._node = None
