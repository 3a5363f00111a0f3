"""Batches of a streaming dataset or a weighted mixture for the recipes: one unbounded, resumable stream.

A recipe epoch over a stream is a window of ``steps_per_epoch`` steps: the stream is never restarted, so
consecutive epochs read on where the last one stopped (a corpus pass ends and the next, reshuffled, begins
inside the stream) and nothing is read twice within a pass or skipped. The position is the
``StatefulDataLoader`` state (each DataLoader worker's reader position), saved with every training state.
"""

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from qwenvl_data.datasets import StreamingChatDataset, WeightedMixture
from qwenvl_data.training._distributed import rank_and_world


class StreamLoader:
    """Per-rank batches of an unbounded stream whose ``iter()`` continues the previous pass.

    Args:
        dataset: a ``StreamingChatDataset`` (streamed without end: its passes follow each other) or a
            ``WeightedMixture``.
        collate_fn, batch_size, num_workers: as for ``DataLoader`` (``batch_size`` samples per rank).
        seed: seeds the mixture's draws and the map-style orders inside it.
        shuffle: shuffle map-style datasets inside a mixture.

    Raises:
        TypeError: another kind of ``IterableDataset`` (its position could not be saved exactly).
    """

    def __init__(
        self,
        dataset: Any,
        collate_fn: Callable[[list[Any]], dict[str, torch.Tensor]],
        batch_size: int,
        *,
        seed: int,
        shuffle: bool = True,
        num_workers: int = 0,
    ) -> None:
        self.num_records: int | None = None
        if isinstance(dataset, StreamingChatDataset):
            self.num_records = dataset.num_records()
            dataset = WeightedMixture([dataset], [1.0], seed=seed, shuffle=shuffle)
        elif not isinstance(dataset, WeightedMixture):
            raise TypeError(
                f"the recipes stream StreamingChatDataset and WeightedMixture (resumable exactly), got "
                f"{type(dataset).__name__}; wrap other data as a map-style Dataset"
            )
        self.batch_size = batch_size
        self.loader = StatefulDataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn, num_workers=num_workers)
        self._batches: Iterator | None = None

    def batches_per_epoch(self) -> int | None:
        """Batches per rank in one pass when the record count is known (parquet, Arrow), else None."""
        if self.num_records is None:
            return None
        return self.num_records // (rank_and_world()[1] * self.batch_size)

    def __iter__(self) -> Iterator:
        if self._batches is None:
            self._batches = iter(self.loader)
        return self._batches

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from ``state_dict()`` at the next ``iter()``."""
        self.loader.load_state_dict(state_dict)
        self._batches = None
