"""Map-style dataset: a record source plus a transform, applied lazily in ``__getitem__``."""

import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from qwenvl_data.datasets._processing import (
    RecordProcessor,
    SkippedRecord,
    SkipReporting,
)
from qwenvl_data.datasets._sources import RecordSource, open_source

logger = logging.getLogger(__name__)


class ChatDataset(SkipReporting, Dataset):
    """Raw conversation records -> model-ready samples, one at a time, on demand.

    Nothing is pre-loaded or pre-tokenised: memory is the source's index (byte offsets for JSON Lines,
    a memory-mapped Arrow table otherwise) plus, with ``filter_fn``, one int64 per kept record.

    Args:
        source: random-access raw records (``JsonlSource``, ``HFSource`` or any sequence of dicts), also their
            ``RecordOrigin``: a source with ``location(index)`` names where a record is in invalid-JSON errors and
            skip reports; with ``media_dir(index)`` it says where the record's relative media paths resolve.
        processor: what each record goes through (``RecordProcessor``: layout, media, model transform,
            token budget, ``on_error``); its ``stats`` are this dataset's skip counts.
        filter_fn: predicate on the parsed raw record; evaluated once over the source at construction,
            keeping only the indices of accepted records.

    Example:
        >>> ds = ChatDataset(JsonlSource("llava.jsonl"), RecordProcessor(None, image_dir="images"))
        >>> ds[0]["messages"][0].role  # torchtune Messages
        'user'
    """

    def __init__(
        self,
        source: RecordSource,
        processor: RecordProcessor,
        *,
        filter_fn: Callable[[dict], bool] | None = None,
    ) -> None:
        if not hasattr(processor, "process"):
            raise TypeError(
                f"ChatDataset(source, processor) takes a RecordProcessor (model transform and record options "
                f"built once), got {type(processor).__name__}; multimodal_chat_dataset takes the flat keywords"
            )
        self.source, self.processor = source, processor
        self.indices: np.ndarray | None = None
        self.num_filtered = 0
        if filter_fn is not None:
            self.indices = self._accepted(filter_fn)
            self.num_filtered = len(source) - len(self.indices)
            logger.info("filter_fn kept %d of %d records", len(self.indices), len(source))

    def _accepted(self, filter_fn: Callable[[dict], bool]) -> np.ndarray:
        keep = np.zeros(len(self.source), dtype=bool)
        for i in range(len(self.source)):
            record = self.source[i]
            try:
                record = json.loads(record) if isinstance(record, (bytes, str)) else record
            except ValueError:
                keep[i] = True  # malformed records stay, so __getitem__ reports them under on_error
                continue
            keep[i] = bool(filter_fn(record))
        return np.flatnonzero(keep)

    def __len__(self) -> int:
        return len(self.source) if self.indices is None else len(self.indices)

    def __getitem__(self, index: int) -> dict | None:
        """Sample ``index``, transformed; None when skipped under ``on_error="skip"``."""
        sample = self.sample_or_skip(index)
        return None if isinstance(sample, SkippedRecord) else sample

    def sample_or_skip(self, index: int) -> dict | SkippedRecord:
        """Sample ``index``, or, when skipped under ``on_error="skip"``, a ``SkippedRecord`` saying why (the
        recipes count and show these)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} samples")
        index = index % len(self)
        record_index = index if self.indices is None else int(self.indices[index])
        return self.processor.process(record_index, self.source[record_index], self.source)

    @property
    def stats(self) -> dict[str, int]:
        """Skipped samples by cause so far (all DataLoader workers included), plus ``filtered``."""
        return {**self.processor.stats.as_dict(), "filtered": self.num_filtered}


def multimodal_chat_dataset(
    model_transform: Callable[[dict], dict] | None,
    *,
    source: Any = None,
    data_files: Any = None,
    split: str = "train",
    image_dir: str | os.PathLike | None = None,
    format: str | None = None,
    column_map: Mapping[str, str] | None = None,
    on_error: str = "raise",
    max_tokens: int | None = None,
    filter_fn: Callable[[dict], bool] | None = None,
    video_options: Mapping[str, Any] | None = None,
    video_fps: float | None = None,
    **load_dataset_kwargs: Any,
) -> ChatDataset:
    """Builder (YAML ``_component_``) of a lazy map-style multimodal chat dataset.

    Args:
        model_transform: e.g. ``Qwen2_5_VLTransform(...)``; None yields internal-form samples.
        source: ``"jsonl"`` / ``"json"`` / ``"parquet"`` / ``"arrow"`` with ``data_files``, a local dataset
            directory (``save_to_disk``, or data files split by name), a ``datasets.Dataset`` / ``DatasetDict``,
            another ``datasets`` builder name (``"csv"``) with ``data_files``, or None (each file's kind from its
            content and extension). Which files and of which kind is decided as for ``streaming_chat_dataset`` (``resolve_data_files``): JSON Lines or a JSON array
            by content, whatever the name or ``source``, indexed by byte offset; parquet and Arrow files
            through ``datasets`` (memory-mapped). WebDataset tars are read by ``streaming_chat_dataset`` only.
        data_files: a path, a glob pattern, a list of them, or a split dict of those.
        split: the split of a split dict, a dataset directory or a ``DatasetDict``.
        image_dir: where every record's media paths resolve (and must stay); default each record's own data
            file's directory (or the dataset directory); a ``Dataset`` object's paths are used as given unless it
            is set.
        format: a layout name (``"sharegpt"`` / ``"llava"``, ``"openai"``, ``"prompt_completion"``,
            ``"cauldron"``, ``"alpaca"``, ``"input_output"``; see ``qwenvl_data.conversation._layouts``) or None to detect
            per record.
        column_map: ``{expected field: your field}`` renames applied before the layout reads the record.
        on_error: ``"raise"`` | ``"skip"`` (``dataset[i]`` is None; the collator drops it).
        max_tokens: token budget per sample (``SampleTooLongError`` beyond it).
        filter_fn: predicate on raw records, applied once when the dataset is built.
        video_options: ``VideoOptions`` keys for every video part that does not set them (``fps``,
            ``max_frames``, ``total_pixels``, ...), e.g. YAML ``dataset.video_options: {fps: 1}``.
        video_fps: the older spelling of ``video_options={"fps": ...}``.
        **load_dataset_kwargs: passed to ``datasets.load_dataset`` where it reads (parquet, other builders).

    Returns:
        a ``ChatDataset``; ``dataset[i]`` is the transformed sample (or None if skipped).

    Raises:
        FileNotFoundError, ValueError: as ``resolve_data_files`` (the same errors as ``streaming_chat_dataset``).

    Example:
        >>> ds = multimodal_chat_dataset(None, source="jsonl", data_files="llava.jsonl", image_dir="images")
        >>> ds[0]["messages"][0].content[0]["type"]  # torchtune Messages
        'image'
    """
    records = open_source(source, data_files, split, **load_dataset_kwargs)
    processor = RecordProcessor(
        model_transform, format=format, column_map=column_map, image_dir=image_dir,
        on_error=on_error, max_tokens=max_tokens, video_options=video_options, video_fps=video_fps,
    )  # fmt: skip
    return ChatDataset(records, processor, filter_fn=filter_fn)
