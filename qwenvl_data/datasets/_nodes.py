"""The streaming pipeline as ``torchdata.nodes``: a record node, the sample processor as a (parallel) map,
and a node that drops skipped samples. Compose further with ``Batcher`` / ``Loader`` as usual."""

import functools
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, Literal

from torchdata.nodes import BaseNode, Mapper, ParallelMapper

from qwenvl_data.datasets._distributed import rank_and_world_size
from qwenvl_data.datasets._processing import RecordProcessor
from qwenvl_data.datasets._shard_stream import ShardStream
from qwenvl_data.datasets._sources import JsonlSource, source_root
from qwenvl_data.datasets._stats import SkipCounts

logger = logging.getLogger(__name__)


class JsonlRecordNode(BaseNode[tuple[int, bytes]]):
    """This rank's shard of JSON Lines records, ``(record_index, raw_line)``, through a seeded shuffle buffer.

    Each ``reset()`` without a state starts the next epoch (a new shuffle order), as torchdata's samplers do.

    Args:
        source: indexed JSON Lines files.
        seed: shuffle seed. shuffle_buffer_size: buffer length (1 = file order).
        rank, world_size: this process's place; default from ``torch.distributed``.
        epoch: the first epoch.
    """

    def __init__(
        self,
        source: JsonlSource,
        *,
        seed: int = 0,
        shuffle_buffer_size: int = 1000,
        rank: int | None = None,
        world_size: int | None = None,
        epoch: int = 0,
    ) -> None:
        super().__init__()
        self.source, self.seed, self.shuffle_buffer_size = source, seed, shuffle_buffer_size
        self.rank, self.world_size = rank_and_world_size(rank, world_size)
        self._next_epoch = epoch
        self._stream: ShardStream | None = None

    def reset(self, initial_state: dict | None = None) -> None:
        super().reset(initial_state)
        self._stream = ShardStream(
            self.source, self.rank, self.world_size, self.seed, self.shuffle_buffer_size, self._next_epoch
        )
        if initial_state is not None:
            self._stream.load(initial_state)
        self._next_epoch = self._stream.epoch + 1

    def next(self) -> tuple[int, bytes]:
        return next(self._stream)

    def get_state(self) -> dict[str, Any]:
        return self._stream.state()


class DropSkipped(BaseNode[dict]):
    """Passes samples through and drops the None a skipped sample becomes; logs skip counts at epoch end."""

    SOURCE_KEY = "source"

    def __init__(self, source: BaseNode, stats: SkipCounts) -> None:
        super().__init__()
        self.source, self.stats = source, stats

    def reset(self, initial_state: dict | None = None) -> None:
        super().reset(initial_state)
        self.source.reset(None if initial_state is None else initial_state[self.SOURCE_KEY])

    def next(self) -> dict:
        while True:
            try:
                sample = next(self.source)
            except StopIteration:
                logger.info("epoch finished; dataset %s", self.stats.summary())
                raise
            if sample is not None:
                return sample

    def get_state(self) -> dict[str, Any]:
        return {self.SOURCE_KEY: self.source.state_dict()}


def _process_item(processor: RecordProcessor, item: tuple[int, Any]) -> dict | None:
    return processor(*item)


def streaming_chat_nodes(
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
    rank: int | None = None,
    world_size: int | None = None,
    num_workers: int = 0,
    method: Literal["thread", "process"] = "thread",
) -> DropSkipped:
    """Builder of the streaming pipeline as a ``torchdata.nodes`` graph.

    ``JsonlRecordNode -> Mapper | ParallelMapper(processor, num_workers, method) -> DropSkipped``.
    Wrap it as ``Loader(Batcher(node, batch_size), ...)`` and use the collator as a ``Mapper``.
    Skip counts are in ``node.stats.as_dict()``: exact with threads (the default); with ``method="process"``
    the processes share the counters' memory but not a lock, so simultaneous skips may be undercounted.

    Args: as ``streaming_chat_dataset``; ``num_workers`` / ``method`` parallelise the transform.

    Returns:
        the root node yielding transformed samples; ``state_dict()`` / ``reset(state)`` resume exactly.
    """
    source = JsonlSource(data_files)
    records = JsonlRecordNode(
        source, seed=seed, shuffle_buffer_size=shuffle_buffer_size, rank=rank, world_size=world_size
    )
    processor = RecordProcessor(
        model_transform,
        format=format,
        image_dir=os.fspath(source_root(None, data_files) if image_dir is None else image_dir),
        on_error=on_error,
        max_tokens=max_tokens,
        video_options=video_options,
        video_fps=video_fps,
        column_map=column_map,
        locate=source.location,
    )
    process = functools.partial(_process_item, processor)
    if num_workers > 0:
        mapped = ParallelMapper(records, process, num_workers, method=method)
    else:
        mapped = Mapper(records, process)
    return DropSkipped(mapped, processor.stats)
