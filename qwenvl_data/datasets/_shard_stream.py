"""The record order of one reader (a rank's DataLoader worker) over a sharded corpus, for one epoch at a time,
with an explicit, tiny state (positions and counters, never records) for exact resume.

Sharding, for ``R`` readers and ``S`` shards (the shard order shuffled per epoch when shuffling):
- ``S >= R``: reader ``r`` reads shards ``r, r + R, r + 2R, ...`` of that order, whole;
- ``S < R``: reader ``r`` reads shard ``r % S`` and keeps its records ``k`` with
  ``k % m == r // S``, ``m`` being the number of readers on that shard.
Either way every record belongs to exactly one reader. Records pass through a shuffle buffer of
``buffer_size``; each step emits the one chosen by an RNG seeded with ``(seed, epoch, reader, emitted)``.
The state names each buffered record by its position (shard, record number), and resuming re-reads those
shards up to that position: a resumed stream repeats the uninterrupted one exactly.
"""

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from qwenvl_data.datasets._shards import Shard, shard_labels

Position = tuple[int, int]  # (index in this reader's plan, record number inside that shard)


class ShardStream:
    """Iterates ``(label, raw_record)`` of one reader's part of the corpus for one epoch at a time.

    Args:
        shards: the whole corpus (``list_shards``), same list on every reader.
        reader: this reader's number, ``rank * num_workers + worker_id``.
        num_readers: ``world_size * num_workers``.
        seed: shuffle seed (same on every reader).
        buffer_size: shuffle buffer length; 1 keeps file order (and the shard order).
        epoch: the epoch to start (each epoch shuffles differently).
    """

    def __init__(
        self, shards: Sequence[Shard], reader: int, num_readers: int, seed: int, buffer_size: int, epoch: int
    ) -> None:
        if not 0 <= reader < num_readers:
            raise ValueError(f"reader {reader} out of range for {num_readers} readers")
        if buffer_size < 1:
            raise ValueError(f"shuffle buffer size must be >= 1, got {buffer_size}")
        if not shards:
            raise ValueError("the corpus has no shards (empty parquet files or an empty dataset directory?)")
        self.shards, self.reader, self.num_readers = list(shards), reader, num_readers
        self.labels = shard_labels(self.shards)
        self.seed, self.buffer_size = seed, buffer_size
        self.start_epoch(epoch)

    def _plan(self) -> list[tuple[int, int, int]]:
        """This epoch's ``(shard index, stride, offset)`` list: the shards read and which of their records are kept."""
        order = np.arange(len(self.shards))
        if self.buffer_size > 1:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.shards))
        num_shards, readers = len(self.shards), self.num_readers
        if num_shards >= readers:
            return [(int(order[i]), 1, 0) for i in range(self.reader, num_shards, readers)]
        shard = self.reader % num_shards
        return [(int(order[shard]), len(range(shard, readers, num_shards)), self.reader // num_shards)]

    def start_epoch(self, epoch: int) -> None:
        """Rewind to this reader's first record, in ``epoch``'s order."""
        self.epoch = epoch
        self.plan = self._plan()
        self.cursor, self.read, self.emitted = 0, 0, 0
        self.buffer: list[tuple[Position, Any]] = []
        self._records: Iterator[Any] | None = None

    def state(self) -> dict[str, Any]:
        """Everything needed to continue exactly here: epoch, read position, buffered positions, emit count."""
        return {
            "reader": self.reader,
            "num_readers": self.num_readers,
            "num_shards": len(self.shards),
            "epoch": self.epoch,
            "cursor": self.cursor,
            "read": self.read,
            "buffer": [list(position) for position, _ in self.buffer],
            "emitted": self.emitted,
        }

    def load(self, state: dict[str, Any]) -> None:
        """Continue from ``state()`` of a stream over the same corpus and readers; ``{"epoch": e}`` starts epoch e."""
        if "cursor" not in state:
            self.start_epoch(int(state.get("epoch", 0)))
            return
        saved = (state["reader"], state["num_readers"], state["num_shards"])
        if saved != (self.reader, self.num_readers, len(self.shards)):
            raise ValueError(
                f"state of reader {saved[0]}/{saved[1]} over {saved[2]} shards cannot resume reader "
                f"{self.reader}/{self.num_readers} over {len(self.shards)} shards: keep the data files, "
                "world size and num_workers when resuming"
            )
        self.start_epoch(int(state["epoch"]))
        positions = [(int(c), int(k)) for c, k in state["buffer"]]
        found = {}
        for cursor in sorted({c for c, _ in positions}):
            wanted = {k for c, k in positions if c == cursor}
            for k, record in enumerate(self.shards[self.plan[cursor][0]].records()):
                if k in wanted:
                    found[(cursor, k)] = record
                    if len(found) == len(positions) or k >= max(wanted):
                        break
        self.buffer = [(position, found[position]) for position in positions]
        self.cursor, self.emitted = int(state["cursor"]), int(state["emitted"])
        if self.cursor < len(self.plan):
            self._records = self.shards[self.plan[self.cursor][0]].records()
            for _ in range(int(state["read"])):
                next(self._records)
            self.read = int(state["read"])

    def _next_kept(self) -> tuple[Position, Any] | None:
        """The next record this reader keeps, or None when its shards are done."""
        while self.cursor < len(self.plan):
            shard, stride, offset = self.plan[self.cursor]
            if self._records is None:
                self._records = self.shards[shard].records()
            for record in self._records:
                k = self.read
                self.read += 1
                if k % stride == offset:
                    return (self.cursor, k), record
            self.cursor, self.read, self._records = self.cursor + 1, 0, None
        return None

    def __iter__(self) -> "ShardStream":
        return self

    def __next__(self) -> tuple[str, Any]:
        while len(self.buffer) < self.buffer_size and (kept := self._next_kept()) is not None:
            self.buffer.append(kept)
        if not self.buffer:
            raise StopIteration
        pick = 0
        if len(self.buffer) > 1:
            rng = np.random.default_rng([self.seed, self.epoch, self.reader, self.emitted])
            pick = int(rng.integers(len(self.buffer)))
        (cursor, k), record = self.buffer[pick]
        self.buffer[pick] = self.buffer[-1]
        self.buffer.pop()
        self.emitted += 1
        return f"{self.labels[self.plan[cursor][0]]}#{k}", record
