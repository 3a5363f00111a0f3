"""One raw record -> one model-ready sample, under the ``on_error`` policy. Shared by the map-style and
the streaming datasets so that both convert, transform, budget-check and count skips identically."""

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from qwenvl_data._messages import sample_name
from qwenvl_data.datasets._formats import RecordToMessages
from qwenvl_data.datasets._stats import SkipCounts
from qwenvl_data.errors import InvalidConversationError, SampleError, SampleTooLongError
from qwenvl_data.video import VideoOptions

logger = logging.getLogger(__name__)

ON_ERROR = ("raise", "skip")


class RecordProcessor:
    """Converts a raw record to the internal form (``RecordToMessages``) and applies the model transform.

    Args:
        model_transform: callable on ``{"id", "messages", ...}`` returning the sample with ``tokens`` etc.;
            None returns the internal-form sample untransformed.
        format: a layout name (``FORMATS`` in ``_formats``) or None to detect per record.
        column_map: ``{expected field: your field}`` renames (see ``_formats``).
        image_dir: directory media paths resolve under; paths escaping it are refused.
        on_error: ``"raise"`` re-raises a bad sample's ``SampleError`` naming its index and id;
            ``"skip"`` returns None and counts the cause in ``stats``.
        max_tokens: token budget; a transformed sample with more ``tokens`` is a ``SampleTooLongError``.
        keep_fields: record fields copied into the sample (e.g. ``"answer"``).
        video_options: ``VideoOptions`` keys applied to every video part that does not set them itself
            (``fps``, ``max_frames``, ``total_pixels``, ...); unset keys take the model transform's defaults.
        video_fps: the older spelling of ``video_options={"fps": ...}``.
        locate: record index -> where it is (``"train.jsonl line 7"``), named in invalid-JSON errors.
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
        video_options: Mapping[str, Any] | None = None,
        video_fps: float | None = None,
        column_map: Mapping[str, str] | None = None,
        locate: Callable[[int], str] | None = None,
    ) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.model_transform = model_transform
        self.on_error = on_error
        self.max_tokens = max_tokens
        self.keep_fields = tuple(keep_fields)
        self.video_options = {**(video_options or {}), **({"fps": video_fps} if video_fps is not None else {})}
        VideoOptions().updated(self.video_options)  # unknown keys and bad values fail here, not per sample
        self.to_messages = RecordToMessages(format, column_map, image_dir=image_dir, video_options=self.video_options)
        self.locate = locate
        self.stats = SkipCounts()

    def parse(self, index: int, record: Any) -> Any:
        """Record number ``index`` as read from its source: JSON text is parsed, anything else returned as is.

        Raises:
            InvalidConversationError: invalid JSON, naming where it is when the source can say.
        """
        if not isinstance(record, (bytes, str)):
            return record
        try:
            return json.loads(record)
        except ValueError as err:
            where = f" at {self.locate(index)}" if self.locate is not None else ""
            raise InvalidConversationError(f"invalid JSON{where} ({err})") from err

    def convert(self, index: int, record: Any) -> tuple[dict, str]:
        """A parsed record -> (``{"id", "messages", ...}``, layout name).

        Raises:
            SampleError: no known layout, bad conversation or media references (the sample is not named).
        """
        sample_id = record.get("id", index) if isinstance(record, dict) else index
        converted = self.to_messages(record)
        sample = {"id": sample_id, "messages": converted["messages"]}
        sample.update({key: record[key] for key in self.keep_fields if key in record})
        return sample, converted["layout"]

    def transform(self, sample: dict) -> dict:
        """The model transform and the token budget on an internal-form sample.

        Raises:
            SampleError: from the model transform, or ``SampleTooLongError`` over ``max_tokens``.
        """
        if self.model_transform is not None:
            sample = self.model_transform(sample)
        if self.max_tokens is not None and len(sample["tokens"]) > self.max_tokens:
            raise SampleTooLongError(f"{len(sample['tokens'])} tokens, budget {self.max_tokens}")
        return sample

    def __call__(self, index: int, record: Any) -> dict | None:
        """Process record number ``index`` (a dict, or one JSON text line).

        Returns:
            the transformed sample (with ``"id"``), or None when it was skipped under ``on_error="skip"``.
        """
        sample_id: Any = None
        try:
            record = self.parse(index, record)
            sample_id = record.get("id", index) if isinstance(record, dict) else index
            sample, _ = self.convert(index, record)
            return self.transform(sample)
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
