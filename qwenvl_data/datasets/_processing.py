"""One raw record -> one model-ready sample, under the ``on_error`` policy. Shared by the map-style and
the streaming datasets so that both convert, transform, budget-check and count skips identically."""

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from qwenvl_data._constants import IGNORE_INDEX
from qwenvl_data._reading import mark_reading
from qwenvl_data.conversation._fields import holds_value
from qwenvl_data.conversation._layouts import RecordToMessages
from qwenvl_data.datasets._shards import DamagedShard
from qwenvl_data.datasets._stats import SkipCounts, SkippedRecord
from qwenvl_data.errors import (
    DamagedShardError,
    InvalidConversationError,
    NoTrainedTokenError,
    SampleError,
    SampleTooLongError,
    UnexpectedSampleError,
    sample_name,
)
from qwenvl_data.video import VideoOptions

logger = logging.getLogger(__name__)

ON_ERROR = ("raise", "skip")


class RecordOrigin(Protocol):
    """Where a dataset's records come from, asked per record by its index (an int, or a stream's label): the
    map-style sources (``JsonlSource`` ...) and the stream's ``ShardOrigins`` answer it; either method may be
    missing (a plain list of dicts has neither)."""

    def location(self, index: Any) -> str | None:
        """Where the record is in its files (``"train.jsonl line 7"``), for error messages; None if unknown."""

    def media_dir(self, index: Any) -> str | None:
        """The directory the record's relative media paths resolve under (and stay inside) when the processor
        has no ``image_dir``: its own data file's; None: paths as given."""


def _ask(origin: RecordOrigin | None, question: str, index: Any) -> str | None:
    answer = getattr(origin, question, None)
    return None if answer is None else answer(index)


def sample_or_skip(dataset: Any, index: int) -> dict | SkippedRecord:
    """``dataset[index]``, or why it was skipped when the dataset can say (``ChatDataset.sample_or_skip``); a
    dataset that cannot skips by returning None, which becomes a ``SkippedRecord`` here (a skip has one form)."""
    method = getattr(dataset, "sample_or_skip", None)
    sample = dataset[index] if method is None else method(index)
    return SkippedRecord.unexplained(index) if sample is None else sample


class RecordProcessor:
    """Converts a raw record to torchtune ``Message``s (``RecordToMessages``) and applies the model transform:
    what a dataset does to each record, built once and handed to ``ChatDataset`` / ``StreamingChatDataset``.

    Args:
        model_transform: callable on ``{"id", "messages", ...}`` returning the sample with ``tokens`` etc.;
            None returns the internal-form sample untransformed.
        format: a layout name (``FORMATS`` in ``qwenvl_data.conversation._layouts``) or None to detect per record.
        column_map: ``{expected field: your field}`` renames (see ``qwenvl_data.conversation._layouts``).
        image_dir: directory every record's media paths resolve under; paths escaping it are refused. None: each
            record's own directory, ``origin.media_dir(index)`` (its data file's), confined likewise; paths as
            given where the origin has none (records built in code).
        on_error: ``"raise"`` re-raises a bad sample's error naming its index and id; ``"skip"`` returns
            None (``process``: a ``SkippedRecord``) and counts the cause, with the record's id, in ``stats``.
            Any exception raised for one record counts (see ``process``), not only ``SampleError``.
        max_tokens: token budget; a transformed sample with more ``tokens`` is a ``SampleTooLongError``.
        keep_fields: record fields copied into the sample (e.g. ``"answer"``).
        video_options: ``VideoOptions`` keys applied to every video part that does not set them itself
            (``fps``, ``max_frames``, ``total_pixels``, ...); unset keys take the model transform's defaults.
        video_fps: the older spelling of ``video_options={"fps": ...}``.

    Raises:
        ValueError: an unknown ``on_error``, ``format`` or video option (here, not at the first sample).

    Example:
        >>> processor = RecordProcessor(None, on_error="skip")
        >>> processor.process(0, b'{"id": "a", "messages": []}').cause
        'bad_conversation'
    """

    def __init__(
        self,
        model_transform: Callable[[dict], dict] | None = None,
        *,
        format: str | None = None,
        column_map: Mapping[str, str] | None = None,
        image_dir: str | os.PathLike | None = None,
        on_error: str = "raise",
        max_tokens: int | None = None,
        keep_fields: Sequence[str] = (),
        video_options: Mapping[str, Any] | None = None,
        video_fps: float | None = None,
    ) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.model_transform = model_transform
        self.on_error = on_error
        self.max_tokens = max_tokens
        self.keep_fields = tuple(keep_fields)
        self.video_options = {**(video_options or {}), **({"fps": video_fps} if video_fps is not None else {})}
        VideoOptions().updated(self.video_options)  # unknown keys and bad values fail here, not per sample
        image_dir = self.image_dir = None if image_dir is None else os.fspath(image_dir)
        self.to_messages = RecordToMessages(
            format, column_map, image_dir=image_dir, video_options=self.video_options, keep_fields=self.keep_fields
        )
        self.stats = SkipCounts()

    def parse(self, index: int | str, record: Any, origin: RecordOrigin | None = None) -> Any:
        """Record number ``index`` as read from its source: JSON text is parsed, anything else returned as is.

        Args:
            origin: where records come from (``RecordOrigin``); its ``location`` is named in invalid-JSON errors.

        Raises:
            InvalidConversationError: invalid JSON, naming where it is when ``origin`` can say.
        """
        if not isinstance(record, (bytes, str)):
            return record
        try:
            return json.loads(record)
        except ValueError as err:
            location = _ask(origin, "location", index)
            where = f" at {location}" if location else ""
            raise InvalidConversationError(f"invalid JSON{where} ({err})") from err

    def convert(self, index: int | str, record: Any, origin: RecordOrigin | None = None) -> tuple[dict, str]:
        """A parsed record -> (``{"id", "messages": list[Message], ...}``, layout name); the id is the record's
        ``id`` when it holds one, else ``index``; ``keep_fields`` that hold values are copied. Media paths resolve
        under ``image_dir``, else under ``origin.media_dir(index)``.

        Raises:
            SampleError: no known layout, bad conversation or media references (the sample is not named).
        """
        media_dir = self.image_dir if self.image_dir is not None else _ask(origin, "media_dir", index)
        converted = self.to_messages(record, image_dir=media_dir)
        sample = {"id": _record_id(index, record), "messages": converted["messages"]}
        sample.update({key: record[key] for key in self.keep_fields if holds_value(record.get(key))})
        return sample, converted["layout"]

    def transform(self, sample: dict) -> dict:
        """The model transform and the token budget on an internal-form sample.

        Raises:
            SampleError: from the model transform, ``SampleTooLongError`` over ``max_tokens``, or
                ``NoTrainedTokenError`` when the labels train no token.
        """
        if self.model_transform is not None:
            sample = self.model_transform(sample)
        if self.max_tokens is not None and len(sample["tokens"]) > self.max_tokens:
            raise SampleTooLongError(f"{len(sample['tokens'])} tokens, budget {self.max_tokens}")
        if "labels" in sample and not _trains_a_token(sample["labels"]):
            raise NoTrainedTokenError("no trained token (no assistant turn, or every answer token masked)")
        return sample

    def __call__(self, index: int | str, record: Any, origin: RecordOrigin | None = None) -> dict | None:
        """Process record number ``index`` (a dict, or one JSON text line) from ``origin`` (``RecordOrigin``).

        Returns:
            the transformed sample (with ``"id"``), or None when it was skipped under ``on_error="skip"``.
        """
        sample = self.process(index, record, origin)
        return None if isinstance(sample, SkippedRecord) else sample

    def process(self, index: int | str, record: Any, origin: RecordOrigin | None = None) -> dict | SkippedRecord:
        """As ``__call__``, but a skipped record comes back as a ``SkippedRecord`` saying why.

        Any exception raised while turning this one record into a sample is the record's fault here
        (malformed text can fail deep inside a parser as ``KeyError``/``TypeError``, a video with fps 0 as
        ``ValueError``): under ``"skip"`` it is counted with the cause ``unexpected_error`` and its type; under
        ``"raise"`` it propagates with a note naming the sample index and id. ``MemoryError`` always propagates.
        A sample whose labels train no token is a ``NoTrainedTokenError`` (cause ``no_trained_token``).
        """
        sample_id: Any = None
        mark_reading(sample_name(index, None))  # a read that never returns gets named (training/_watchdog.py)
        try:
            if isinstance(record, DamagedShard):  # the rest of a stream's shard is unreadable: named and counted
                sample_id = os.path.basename(record.path)
                raise DamagedShardError(record.message())
            record = self.parse(index, record, origin)
            sample_id = _record_id(index, record)
            mark_reading(sample_name(index, sample_id))
            sample, _ = self.convert(index, record, origin)
            return self.transform(sample)
        except SampleError as err:
            if self.on_error == "raise":
                # The model transform already names the sample by id; say it once, with the index added.
                detail = str(err).removeprefix(f"{sample_name(None, sample_id)}: ")
                raise err.reworded(f"{sample_name(index, sample_id)}: {detail}") from err
            return self._skip(index, sample_id, err, origin)
        except MemoryError:
            raise
        except Exception as err:
            if self.on_error == "raise":
                err.add_note(f"while processing {sample_name(index, sample_id)}")
                raise
            return self._skip(index, sample_id, UnexpectedSampleError(f"{type(err).__name__}: {err}"), origin)

    def _skip(self, index: int | str, sample_id: Any, err: SampleError, origin: RecordOrigin | None) -> SkippedRecord:
        location = _ask(origin, "location", index) if sample_id is None else None
        skipped = SkippedRecord.from_error(index, sample_id, err, location)
        self.stats.add(skipped)
        logger.info("skipping sample %s (%s) [%s]: %s", index, sample_id, err.cause, err)
        return skipped


def _record_id(index: int, record: Any) -> Any:
    """The record's ``id`` when it holds one (Arrow rows have the column, None where unset), else its index."""
    sample_id = record.get("id") if isinstance(record, dict) else None
    return sample_id if holds_value(sample_id) else index


def _trains_a_token(labels: Any) -> bool:
    """Whether a label other than IGNORE_INDEX predicts something: a label at position 0 has no position before
    it to be predicted from, so it trains nothing (the loss pairs position i with label i + 1)."""
    return any(int(label) != IGNORE_INDEX for label in labels[1:])



class SkipReporting:
    """``log_stats`` / ``reset_stats`` of a dataset whose ``processor`` is a ``RecordProcessor`` (map-style and
    streaming datasets report skips the same way)."""

    processor: RecordProcessor

    def log_stats(self, epoch: int | None = None) -> str:
        """Log (INFO) and return the skip summary of this dataset object (every record any worker processed,
        read-ahead included). The recipes report their own exact counts of the records their steps consumed
        (see ``qwenvl_data.training``), at each epoch end and at the end of the run."""
        line = ("" if epoch is None else f"epoch {epoch}: ") + self.processor.stats.summary()
        logger.info(line)
        return line

    def reset_stats(self) -> None:
        """Zero the skip counters (to count the next epoch on its own)."""
        self.processor.stats.reset()
