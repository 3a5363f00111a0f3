"""Turn the media references found in records into values the model transform loads.

Every reference goes through ``qwenvl_data.vision._media_refs.resolve_media``, the resolver the transform and
``load_image`` use too, with the record's ``image_dir`` as the confinement (paths, ``file://`` URIs and HF image
dict paths outside it are refused alike). Video references add frame folders and video files.

Decoding stays in the model transform (lazily, per sample); here we only resolve and validate references.
"""

import os
import re
from typing import Any

import torch

from qwenvl_data.vision._media_refs import ResolvedMedia, media_file, resolve_media
from qwenvl_data.errors import ImageLoadError

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".flv", ".mpeg", ".mpg")


def resolve_image(value: Any, image_dir: str | None) -> ResolvedMedia:
    """One image reference from a record -> PIL image, bytes, uint8 tensor, or a safe absolute path.

    Args:
        value: any reference ``resolve_media`` takes: a path (relative to ``image_dir``, or absolute inside it),
            a ``file://`` URI, a ``data:`` URL, bytes, a PIL image, an HF ``datasets`` Image dict
            (``{"bytes": ..., "path": ...}``) or an OpenAI ``{"url": ...}`` dict.
        image_dir: directory every path must stay inside.

    Returns:
        the value the image transform accepts.

    Raises:
        ImageLoadError: remote URLs, malformed data URLs, or a value of an unsupported type.
        UnsafePathError: a path (of any form) that escapes ``image_dir``.
    """
    return resolve_media(value, image_dir)


def _natural_key(name: str) -> list:
    """Sort frame_2.jpg before frame_10.jpg."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def resolve_video(value: Any, image_dir: str | None) -> list | torch.Tensor | str:
    """One video reference -> what the transform's ``{"type": "video", "video": ...}`` takes.

    Video files are only located here; the model transform decodes the frames it keeps, lazily, with the
    part's ``VideoOptions``.

    Args:
        value: a list of frame references (each as in ``resolve_image``), a directory of frame files
            (sorted naturally by name) or a video file, each given as a path or ``file://`` URI, a video file's
            bytes (a WebDataset ``.mp4`` member), or a uint8 tensor [T, C, H, W].
        image_dir: directory every path must stay inside.

    Returns:
        frames as a list of PIL images / bytes / paths, the tensor unchanged, the video file's safe path, or its bytes.

    Raises:
        ImageLoadError: a missing path, one that is neither a directory nor a regular file (FIFO, device), an
            empty frame directory, a file that is not a video, or a reference that is not a path.
        UnsafePathError: a path (of any form) that escapes ``image_dir``.
    """
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):  # an encoded file, decoded lazily by the transform
        return bytes(value)
    if isinstance(value, (list, tuple)):
        if not value:
            raise ImageLoadError("video with no frames")
        return [resolve_image(frame, image_dir) for frame in value]
    path = media_file(value, image_dir, "video", allow_directory=True)
    if os.path.isdir(path):
        names = sorted((n for n in os.listdir(path) if n.lower().endswith(FRAME_EXTENSIONS)), key=_natural_key)
        if not names:
            raise ImageLoadError(f"video frame directory {path!r} holds no frame files {FRAME_EXTENSIONS}")
        return [os.path.join(path, n) for n in names]
    if path.lower().endswith(VIDEO_EXTENSIONS):
        return path
    raise ImageLoadError(f"video {path!r} is neither a frame directory nor a video file {VIDEO_EXTENSIONS}")
