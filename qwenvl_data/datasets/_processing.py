"""One raw record -> one model-ready sample, under the ``on_error`` policy. Shared by the map-style and
the streaming datasets so that both convert, transform, budget-check and count skips identically."""

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from qwenvl_data._messages import sample_name
from qwenvl_data.datasets._formats import FORMATS, to_conversation
from qwenvl_data.datasets._stats import SkipCounts
from qwenvl_data.errors import InvalidConversationError, SampleError, SampleTooLongError

logger = logging.getLogger(__name__)

ON_ERROR = ("raise", "skip")


class RecordProcessor:
    """Converts a raw record to the internal form and applies the model transform.

    Args:
        model_transform: callable on ``{"id", "messages", ...}`` returning the sample with ``tokens`` etc.;
            None returns the internal-form sample untransformed.
        format: one of ``FORMATS`` or None to detect per record.
        image_dir: directory media paths resolve under; paths escaping it are refused.
        on_error: ``"raise"`` re-raises a bad sample's ``SampleError`` naming its index and id;
            ``"skip"`` returns None and counts the cause in ``stats``.
        max_tokens: token budget; a transformed sample with more ``tokens`` is a ``SampleTooLongError``.
        keep_fields: record fields copied into the sample (e.g. ``"answer"``).
        video_fps: frame rate assumed for videos given as frames (default ``VIDEO_FPS``).
    """

    def __init__(
        self,
        model_transform: Callable[[dict], dict] | None,
        *,
        format: str | None,
        image_dir: str,
        on_error: str = "raise",
        max_tokens: int | None = None,
        keep_fields: Sequence[str] = (),
        video_fps: float | None = None,
    ) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if format is not None and format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS} or None, got {format!r}")
        self.model_transform = model_transform
        self.format = format
        self.image_dir = image_dir
        self.on_error = on_error
        self.max_tokens = max_tokens
        self.keep_fields = tuple(keep_fields)
        self.video_fps = video_fps
        self.stats = SkipCounts()

    def __call__(self, index: int, record: Any) -> dict | None:
        """Process record number ``index`` (a dict, or one JSON text line).

        Returns:
            the transformed sample (with ``"id"``), or None when it was skipped under ``on_error="skip"``.
        """
        sample_id: Any = None
        try:
            if isinstance(record, (bytes, str)):
                try:
                    record = json.loads(record)
                except ValueError as err:
                    raise InvalidConversationError(f"invalid JSON ({err})") from err
            sample_id = record.get("id", index) if isinstance(record, dict) else index
            messages = to_conversation(record, self.format, self.image_dir, self.video_fps)
            sample = {"id": sample_id, "messages": messages}
            sample.update({key: record[key] for key in self.keep_fields if key in record})
            if self.model_transform is not None:
                sample = self.model_transform(sample)
            if self.max_tokens is not None and len(sample["tokens"]) > self.max_tokens:
                raise SampleTooLongError(f"{len(sample['tokens'])} tokens, budget {self.max_tokens}")
            return sample
        except SampleError as err:
            where = f"sample {index} ({'id unknown' if sample_id is None else sample_id})"
            if self.on_error == "raise":
                # The model transform already names the sample by id; say it once, with the index added.
                detail = str(err).removeprefix(f"{sample_name({'id': sample_id})}: ")
                raise type(err)(f"{where}: {detail}") from err
            self.stats.add(err)
            logger.info("skipping %s [%s]: %s", where, err.cause, err)
            return None
        except Exception as err:
            err.add_note(f"while processing sample {index} ({sample_id})")
            raise


class SkipReporting:
    """``log_stats`` / ``reset_stats`` of a dataset whose ``processor`` is a ``RecordProcessor`` (map-style and
    streaming datasets report skips the same way)."""

    processor: RecordProcessor

    def log_stats(self, epoch: int | None = None) -> str:
        """Log (INFO) and return the skip summary; recipes call it at the end of each epoch."""
        line = ("" if epoch is None else f"epoch {epoch}: ") + self.processor.stats.summary()
        logger.info(line)
        return line

    def reset_stats(self) -> None:
        """Zero the skip counters (to count the next epoch on its own)."""
        self.processor.stats.reset()
