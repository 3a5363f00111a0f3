"""Streaming over large corpora (JSON Lines, JSON, parquet, ``save_to_disk`` directories, WebDataset tars):
shards read lazily, split over ranks and DataLoader workers, shuffled through a seeded buffer, several
epochs, exactly resumable. One pipeline (``torchdata.nodes``), seen as an ``IterableDataset``
(``streaming_chat_dataset``) or as the node graph itself (``streaming_chat_nodes``)."""

import functools
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

from torchdata.nodes import BaseNode, Mapper, ParallelMapper

from qwenvl_data.datasets._nodes import DropSkipped, ReaderNodeDataset, ShardRecordNode
from qwenvl_data.datasets._data_files import resolve_data_files
from qwenvl_data.datasets._processing import RecordProcessor, SkippedRecord, SkipReporting
from qwenvl_data.datasets._shards import Shard, ShardOrigins, count_records, shards_of


def _process_item(processor: RecordProcessor, origins: ShardOrigins, item: tuple[str, Any]) -> dict | SkippedRecord:
    label, record = item
    return processor.process(label, record, origins)


class StreamingChatDataset(SkipReporting, ReaderNodeDataset):
    """Conversation records -> model-ready samples, streamed shard by shard.

    Reader = ``rank * num_workers + worker_id`` of ``world_size * num_workers``; every record is read by exactly
    one reader (see ``ShardStream``): whole shards when there are at least as many shards as readers, else
    every m-th record of a shard. Readers with more shards yield more samples; for balanced ranks use a
    number of shards that is a multiple of the readers (recipes stream without end, so ranks never wait).
    Skipped samples (``on_error="skip"``) are not yielded and are counted in ``stats``. A sample's index in
    error messages is ``<shard>#<record number>``; a malformed JSON record is also named by file and line.

    Resume: ``state_dict()`` / ``load_state_dict()`` (see ``ReaderNodeDataset``) need the same data files,
    seed, buffer size, world size and ``num_workers``.

    Args:
        shards: the corpus (``list_shards``).
        processor: what each record goes through (``RecordProcessor``, as for ``ChatDataset``).
        seed: shuffle seed. shuffle_buffer_size: records in the shuffle buffer (1 = file and shard order).
        epochs: passes over the data per iteration (None = forever); ``set_epoch`` picks the first.
        rank, world_size: this process's place; default from ``torch.distributed`` (or 0 of 1).
    """

    def __init__(
        self,
        shards: list[Shard],
        processor: RecordProcessor,
        *,
        seed: int = 0,
        shuffle_buffer_size: int = 1000,
        epochs: int | None = 1,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if not hasattr(processor, "process"):
            raise TypeError(
                f"StreamingChatDataset(shards, processor) takes a RecordProcessor, got {type(processor).__name__}; "
                "streaming_chat_dataset takes the flat keywords"
            )
        super().__init__(rank, world_size)
        self.shards, self.processor = shards, processor
        self.seed, self.shuffle_buffer_size, self.epochs = seed, shuffle_buffer_size, epochs
        self.first_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Start the next iteration at ``epoch`` (its own shuffle order); call before each epoch's loop."""
        self.first_epoch = epoch

    def num_records(self) -> int | None:
        """Records in the corpus when its metadata says so without reading it (parquet, Arrow), else None."""
        return count_records(self.shards)

    def records_node(self, reader: int, num_readers: int) -> ShardRecordNode:
        """The raw records of one reader: ``(label, record)``."""
        return ShardRecordNode(
            self.shards, reader, num_readers, seed=self.seed, shuffle_buffer_size=self.shuffle_buffer_size,
            epoch=self.first_epoch,
        )  # fmt: skip

    def samples_node(
        self,
        records: BaseNode,
        num_workers: int = 0,
        method: Literal["thread", "process"] = "thread",
        keep_skipped: bool | None = None,
        name: str = "dataset",
    ) -> DropSkipped:
        """Transformed samples of ``records``: ``Mapper | ParallelMapper(processor) -> DropSkipped``; skipped
        records pass as ``SkippedRecord`` when ``keep_skipped`` (default: ``self.keep_skipped``), and each new
        pass over the data is announced as ``PassStarted(name, ...)`` then."""
        # the shards, not the dataset, go with the function to process workers
        process = functools.partial(_process_item, self.processor, ShardOrigins(self.shards))
        if num_workers > 0:
            mapped = ParallelMapper(records, process, num_workers, method=method)
        else:
            mapped = Mapper(records, process)
        keep = self.keep_skipped if keep_skipped is None else keep_skipped
        return DropSkipped(mapped, self.processor.stats, keep_skipped=keep, name=name)

    def reader_node(self, reader: int, num_readers: int) -> BaseNode:
        self._records = self.records_node(reader, num_readers)
        return self.samples_node(self._records)

    def __iter__(self) -> Iterator[dict]:
        node = self._start()
        while True:
            yield from node
            epoch = self._records.stream.epoch
            if self.epochs is not None and epoch >= self.first_epoch + self.epochs - 1:
                return
            node.reset()  # the next epoch

    @property
    def stats(self) -> dict[str, int]:
        """Skipped samples by cause so far (all DataLoader workers of this process included)."""
        return self.processor.stats.as_dict()


def streaming_chat_dataset(
    model_transform: Callable[[dict], dict] | None,
    *,
    source: str | os.PathLike | None = None,
    data_files: Any = None,
    split: str = "train",
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
    """Builder (YAML ``_component_``) of a sharded, resumable streaming dataset.

    Args:
        model_transform: e.g. ``Qwen2_5_VLTransform(...)``; None yields internal-form samples.
        source: ``"jsonl"`` / ``"json"`` / ``"parquet"`` / ``"arrow"`` / ``"webdataset"`` (tar shards) with
            ``data_files``, a local dataset directory (``save_to_disk``, or data files split by name), or None
            to tell each file's kind from its extension (``.jsonl``, ``.json``, ``.parquet``, ``.arrow``,
            ``.tar``); files as for ``multimodal_chat_dataset`` (``resolve_data_files``).
        data_files: a path, a glob pattern (``"shards/train-*.tar"``), a list of them, or a split dict.
        split: the split of a split dict or a dataset directory.
        image_dir: where every record's media paths resolve (and must stay); default each record's own data
            file's directory (or the dataset directory), as for ``multimodal_chat_dataset``.
        format, column_map, on_error, max_tokens, video_options, video_fps: as for ``multimodal_chat_dataset``.
        seed, shuffle_buffer_size, epochs, rank, world_size: as for ``StreamingChatDataset``.

    Returns:
        a ``StreamingChatDataset`` (an ``IterableDataset`` with ``state_dict`` / ``load_state_dict``).

    Example:
        >>> ds = streaming_chat_dataset(None, source="jsonl", data_files="llava.jsonl", shuffle_buffer_size=64)
        >>> next(iter(ds))["messages"][0].role
        'user'
    """
    files = resolve_data_files(source, data_files, split)
    processor = RecordProcessor(
        model_transform, format=format, column_map=column_map, image_dir=image_dir, on_error=on_error,
        max_tokens=max_tokens, video_options=video_options, video_fps=video_fps,
    )  # fmt: skip
    return StreamingChatDataset(
        shards_of(files), processor, seed=seed, shuffle_buffer_size=shuffle_buffer_size, epochs=epochs, rank=rank,
        world_size=world_size,
    )  # fmt: skip


def streaming_chat_nodes(
    model_transform: Callable[[dict], dict] | None,
    *,
    num_workers: int = 0,
    method: Literal["thread", "process"] = "thread",
    **options: Any,
) -> DropSkipped:
    """Builder of the same pipeline as a ``torchdata.nodes`` graph, for your own ``Loader``.

    ``records -> Mapper | ParallelMapper(processor, num_workers, method) -> DropSkipped``; one reader per
    rank (the map runs in parallel, the reading does not). Wrap it as ``Loader(Batcher(node, batch_size))``
    and use the collator as a ``Mapper``. Each ``Loader`` pass is one epoch. Skip counts are in
    ``node.stats.as_dict()``: exact with threads (the default); with ``method="process"`` the processes share
    the counters' memory but not a lock, so simultaneous skips may be undercounted.

    Args:
        num_workers, method: parallelise the transform (0 = inline).
        **options: as for ``streaming_chat_dataset`` (``epochs`` is ignored: the ``Loader`` counts passes).

    Returns:
        the root node yielding transformed samples; ``state_dict()`` / ``reset(state)`` resume exactly.
    """
    dataset = streaming_chat_dataset(model_transform, **options)
    return dataset.samples_node(dataset.records_node(dataset.rank, dataset.world_size), num_workers, method)
