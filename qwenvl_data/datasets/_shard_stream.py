"""The record order of one shard of a JSON Lines corpus: round-robin sharding plus a seeded shuffle buffer,
with an explicit, tiny state (record indices and counters, never records) for exact resume.

Shard ``s`` of ``n`` takes global records ``s, s + n, s + 2n, ...``: every record belongs to exactly one
shard and shard sizes differ by at most one. The buffer holds up to ``buffer_size`` record indices; each
step emits one chosen by an RNG seeded with ``(seed, epoch, shard, emitted)``, so the choice is a pure
function of the state and a resumed stream repeats it exactly.
"""

from typing import Any

import numpy as np

from qwenvl_data.datasets._sources import JsonlSource


class ShardStream:
    """Iterates ``(record_index, raw_line)`` of one shard for one epoch at a time.

    Args:
        source: the indexed JSON Lines files.
        shard: this shard's number, ``rank * num_workers + worker_id``.
        num_shards: ``world_size * num_workers``.
        seed: shuffle seed (same on every shard).
        buffer_size: shuffle buffer length; 1 keeps file order.
        epoch: the epoch to start (each epoch shuffles differently).
    """

    def __init__(
        self, source: JsonlSource, shard: int, num_shards: int, seed: int, buffer_size: int, epoch: int
    ) -> None:
        if not 0 <= shard < num_shards:
            raise ValueError(f"shard {shard} out of range for {num_shards} shards")
        if buffer_size < 1:
            raise ValueError(f"shuffle buffer size must be >= 1, got {buffer_size}")
        self.source, self.shard, self.num_shards = source, shard, num_shards
        self.seed, self.buffer_size = seed, buffer_size
        self.start_epoch(epoch)

    def start_epoch(self, epoch: int) -> None:
        """Rewind to the first record of this shard, in ``epoch``'s order."""
        self.epoch = epoch
        self.next_index = self.shard
        self.buffer: list[int] = []
        self.emitted = 0

    def state(self) -> dict[str, Any]:
        """Everything needed to continue exactly here: epoch, read position, buffered indices, emit count."""
        return {
            "shard": self.shard,
            "num_shards": self.num_shards,
            "epoch": self.epoch,
            "next_index": self.next_index,
            "buffer": list(self.buffer),
            "emitted": self.emitted,
        }

    def load(self, state: dict[str, Any]) -> None:
        """Continue from ``state()`` of a stream with the same sharding; a bare ``{"epoch": e}`` starts epoch e."""
        if "next_index" not in state:
            self.start_epoch(int(state.get("epoch", 0)))
            return
        if (state["shard"], state["num_shards"]) != (self.shard, self.num_shards):
            raise ValueError(
                f"state of shard {state['shard']}/{state['num_shards']} cannot resume shard "
                f"{self.shard}/{self.num_shards}: keep world size and num_workers when resuming"
            )
        self.epoch, self.next_index = int(state["epoch"]), int(state["next_index"])
        self.buffer, self.emitted = [int(i) for i in state["buffer"]], int(state["emitted"])

    def __iter__(self) -> "ShardStream":
        return self

    def __next__(self) -> tuple[int, bytes]:
        while len(self.buffer) < self.buffer_size and self.next_index < len(self.source):
            self.buffer.append(self.next_index)
            self.next_index += self.num_shards
        if not self.buffer:
            raise StopIteration
        pick = 0
        if len(self.buffer) > 1:
            rng = np.random.default_rng([self.seed, self.epoch, self.shard, self.emitted])
            pick = int(rng.integers(len(self.buffer)))
        index = self.buffer[pick]
        self.buffer[pick] = self.buffer[-1]
        self.buffer.pop()
        self.emitted += 1
        return index, self.source[index]
