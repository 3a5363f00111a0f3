"""The records of a streaming dataset or a weighted mixture for the recipes: one unbounded, resumable stream.

A recipe epoch over a stream is a window of ``steps_per_epoch`` steps: the stream is never restarted, so
consecutive epochs read on where the last one stopped (a corpus pass ends and the next, reshuffled, begins
inside the stream) and nothing is read twice within a pass or skipped. The position is the
``StatefulDataLoader`` state (each DataLoader worker's reader position), saved with every training state.
"""

from typing import Any

from torchdata.stateful_dataloader import StatefulDataLoader

from qwenvl_data.datasets import StreamingChatDataset, WeightedMixture
from qwenvl_data.training._signals import SHIELD_WORKER


def _pass_through(item: Any) -> Any:
    """Collate of a loader of single items: hand each over as it is (module level: picklable for workers)."""
    return item


def sample_loader(dataset: Any, sampler: Any = None, num_workers: int = 0) -> StatefulDataLoader:
    """A resumable loader of single items, uncollated (samples, or ``SkippedRecord`` s of skipped records),
    whose workers leave stopping to the training process (``SHIELD_WORKER``)."""
    return StatefulDataLoader(dataset, batch_size=None, sampler=sampler, collate_fn=_pass_through,
                              num_workers=num_workers, worker_init_fn=SHIELD_WORKER if num_workers else None)  # fmt: skip


def stream_outcomes(
    dataset: Any, *, seed: int, shuffle: bool = True, num_workers: int = 0
) -> tuple[StatefulDataLoader, int | None]:
    """A loader of one outcome at a time (a sample, or the ``SkippedRecord`` of a skipped record) without end.

    Args:
        dataset: a ``StreamingChatDataset`` (streamed without end: its passes follow each other) or a
            ``WeightedMixture``.
        seed: seeds the mixture's draws and the map-style orders inside it.
        shuffle: shuffle map-style datasets inside a mixture.
        num_workers: DataLoader worker processes (each reads its own share of the shards).

    Returns:
        (loader, records in one pass when the metadata says so (parquet, Arrow), else None).

    Raises:
        TypeError: another kind of ``IterableDataset`` (its position could not be saved exactly).
    """
    num_records = None
    if isinstance(dataset, StreamingChatDataset):
        num_records = dataset.num_records()
        dataset = WeightedMixture([dataset], [1.0], seed=seed, shuffle=shuffle)
    elif not isinstance(dataset, WeightedMixture):
        raise TypeError(
            f"the recipes stream StreamingChatDataset and WeightedMixture (resumable exactly), got "
            f"{type(dataset).__name__}; wrap other data as a map-style Dataset"
        )
    dataset.keep_skipped = True  # the recipe's ledger counts and reports them
    return sample_loader(dataset, num_workers=num_workers), num_records
