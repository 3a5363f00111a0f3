"""Errors for bad samples, each with a ``cause`` so that ``on_error="skip"`` can count skips by cause."""

import copy


class SampleError(ValueError):
    """A sample that cannot be turned into a training example. ``cause`` names the kind of problem."""

    cause = "invalid_sample"

    def reworded(self, message: str) -> "SampleError":
        """The same error (type and attributes, e.g. ``UnreadFieldError.fields``) with ``message``: how a caller
        adds the sample's name or the message's index."""
        error = copy.copy(self)
        error.args = (message,)
        return error


class ImageLoadError(SampleError):
    """An image or video frame that is missing, empty, corrupt, truncated or a decompression bomb."""

    cause = "bad_image"


class VideoLoadError(ImageLoadError):
    """A video (file or frames) that is missing, not a video, damaged or without frames: its own skip cause, so that
    a report says which medium failed (an ``ImageLoadError`` still, for callers that catch that)."""

    cause = "bad_video"


class PlaceholderMismatchError(SampleError):
    """The number of ``<image>``/``<video>`` placeholders or image parts disagrees with the media given."""

    cause = "placeholder_mismatch"


class InvalidConversationError(SampleError):
    """An empty conversation, an unknown role, or a message without content."""

    cause = "bad_conversation"


class UnreadFieldError(InvalidConversationError):
    """A record field that holds a value its layout does not read (``fields`` names them; counted by inspect)."""

    def __init__(self, message: str, fields: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.fields = tuple(fields)


class SampleTooLongError(SampleError):
    """A sample longer than ``max_seq_len`` that cannot be shortened without cutting a vision span."""

    cause = "too_long"


class UnsafePathError(SampleError):
    """A media path that resolves outside the configured ``image_dir``."""

    cause = "unsafe_path"


class NoTrainedTokenError(SampleError):
    """A sample whose labels are all ignored (no assistant turn, or every answer token masked or cut off):
    it would add nothing to the loss, and a batch of only such samples has no gradient at all."""

    cause = "no_trained_token"


class UnexpectedSampleError(SampleError):
    """Any other exception raised while turning one record into a sample (a ``KeyError`` from malformed text,
    a ``ValueError`` from a video with fps 0, ...); the original is chained and its type kept in the message."""

    cause = "unexpected_error"


def sample_name(index: int | str | None = None, sample_id: object = None) -> str:
    """How every error message names a sample: ``sample 3 (abc)`` by its index and id; ``sample (abc)`` where the
    index is not known (a model transform sees one sample), ``sample 3 (id unknown)`` where the id is not (an id of
    None is no id: Arrow rows hold an ``id`` column for all)."""
    shown_id = "id unknown" if sample_id is None else sample_id
    return f"sample ({shown_id})" if index is None else f"sample {index} ({shown_id})"


class DamagedShardError(SampleError):
    """A data file of a stream that cannot be read to its end (a truncated tar, a file that is not a tar): the
    records after the damage are lost, their number unknown."""

    cause = "damaged_shard"
