"""Iterable dataset over large JSON Lines corpora: sharded by rank and DataLoader worker, shuffled through
a seeded buffer, several epochs, and exactly resumable with ``state_dict()`` / ``load_state_dict()``
(also inside ``torchdata.stateful_dataloader.StatefulDataLoader`` workers)."""

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, Iterator

from torch.utils.data import IterableDataset, get_worker_info

from qwenvl_data.datasets._distributed import rank_and_world_size
from qwenvl_data.datasets._processing import RecordProcessor
from qwenvl_data.datasets._shard_stream import ShardStream
from qwenvl_data.datasets._sources import JsonlSource, source_root

logger = logging.getLogger(__name__)


class StreamingChatDataset(IterableDataset):
    """JSON Lines conversations -> model-ready samples, streamed shard by shard.

    Shard = ``rank * num_workers + worker_id`` of ``world_size * num_workers``; every record is read by
    exactly one shard (see ``ShardStream``). Shard lengths differ by at most one record, so ranks can end an
    epoch one batch apart. Skipped samples (``on_error="skip"``) are not yielded and are counted in ``stats``.

    Resume: ``state_dict()`` is the position of the stream in this process (each DataLoader worker has its
    own, which ``StatefulDataLoader`` collects); ``load_state_dict()`` continues exactly there. Resuming needs
    the same data files, seed, buffer size, world size and ``num_workers``.

    Args:
        source: indexed JSON Lines files.
        model_transform: e.g. ``Qwen2_5_VLTransform``; None yields internal-form samples.
        image_dir: where media paths resolve.
        format, column_map, on_error, max_tokens, video_options, video_fps: as for ``ChatDataset``.
        seed: shuffle seed. shuffle_buffer_size: records in the shuffle buffer (1 = file order).
        epochs: passes over the data per iteration (None = forever); ``set_epoch`` picks the first.
        rank, world_size: this process's place; default from ``torch.distributed`` (or 0 of 1).
    """

    def __init__(
        self,
        source: JsonlSource,
        model_transform: Callable[[dict], dict] | None,
        *,
        image_dir: str | os.PathLike,
        format: str | None = None,
        column_map: Mapping[str, str] | None = None,
        on_error: str = "raise",
        max_tokens: int | None = None,
        video_options: Mapping[str, Any] | None = None,
        video_fps: float | None = None,
        seed: int = 0,
        shuffle_buffer_size: int = 1000,
        epochs: int | None = 1,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.source = source
        self.processor = RecordProcessor(
            model_transform,
            format=format,
            image_dir=os.fspath(image_dir),
            on_error=on_error,
            max_tokens=max_tokens,
            video_options=video_options,
            video_fps=video_fps,
            column_map=column_map,
            locate=source.location,
        )
        self.seed, self.shuffle_buffer_size, self.epochs = seed, shuffle_buffer_size, epochs
        self.rank, self.world_size = rank_and_world_size(rank, world_size)
        self.first_epoch = 0
        self._stream: ShardStream | None = None
        self._resume_state: dict[str, Any] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Start the next iteration at ``epoch`` (its own shuffle order); call before each epoch's loop."""
        self.first_epoch = epoch

    def _open_stream(self) -> ShardStream:
        info = get_worker_info()
        worker_id, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        shard = self.rank * num_workers + worker_id
        stream = ShardStream(
            self.source, shard, self.world_size * num_workers, self.seed, self.shuffle_buffer_size, self.first_epoch
        )
        if self._resume_state is not None:
            stream.load(self._resume_state)
            self._resume_state = None
        return stream

    def __iter__(self) -> Iterator[dict]:
        stream = self._stream = self._open_stream()
        last_epoch = None if self.epochs is None else self.first_epoch + self.epochs - 1
        while True:
            for index, record in stream:
                sample = self.processor(index, record)
                if sample is not None:
                    yield sample
            logger.info(
                "rank %d shard %d/%d finished epoch %d; dataset %s",
                self.rank, stream.shard, stream.num_shards, stream.epoch, self.processor.stats.summary(),
            )
            if last_epoch is not None and stream.epoch >= last_epoch:
                return
            stream.start_epoch(stream.epoch + 1)

    def state_dict(self) -> dict[str, Any]:
        """The stream position of this process (records and counters only, no data)."""
        if self._stream is not None:
            return self._stream.state()
        return dict(self._resume_state) if self._resume_state is not None else {"epoch": self.first_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from ``state_dict()`` at the next ``iter()``."""
        self._resume_state = dict(state_dict)
        self._stream = None

    @property
    def stats(self) -> dict[str, int]:
        """Skipped samples by cause so far, over all workers of this process."""
        return self.processor.stats.as_dict()


def streaming_chat_dataset(
    model_transform: Callable[[dict], dict] | None,
    *,
    data_files: str | os.PathLike | list,
    image_dir: str | os.PathLike | None = None,
    format: str | None = None,
    column_map: Mapping[str, str] | None = None,
    on_error: str = "raise",
    max_tokens: int | None = None,
    video_options: Mapping[str, Any] | None = None,
    video_fps: float | None = None,
    seed: int = 0,
    shuffle_buffer_size: int = 1000,
    epochs: int | None = 1,
    rank: int | None = None,
    world_size: int | None = None,
) -> StreamingChatDataset:
    """Builder (YAML ``_component_``) of a sharded, resumable streaming dataset over JSON Lines files.

    Args: as ``StreamingChatDataset``; ``data_files`` is one ``.jsonl`` path or a list, ``image_dir``
    defaults to the first file's directory.

    Returns:
        a ``StreamingChatDataset`` (an ``IterableDataset`` with ``state_dict`` / ``load_state_dict``).

    Example:
        >>> ds = streaming_chat_dataset(None, data_files="llava.jsonl", shuffle_buffer_size=64, seed=0)
        >>> next(iter(ds))["id"]
    """
    source = JsonlSource(data_files)
    return StreamingChatDataset(
        source,
        model_transform,
        image_dir=source_root(None, data_files) if image_dir is None else image_dir,
        format=format,
        column_map=column_map,
        on_error=on_error,
        max_tokens=max_tokens,
        video_options=video_options,
        video_fps=video_fps,
        seed=seed,
        shuffle_buffer_size=shuffle_buffer_size,
        epochs=epochs,
        rank=rank,
        world_size=world_size,
    )
