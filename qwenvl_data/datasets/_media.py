"""Turn the media references found in records (paths, data URLs, bytes, HF image dicts, frame folders,
video files) into values the model transform loads: a safe absolute path, raw bytes or a PIL image.

Decoding stays in the model transform (lazily, per sample); here we only resolve and validate references.
"""

import base64
import binascii
import os
import re
from typing import Any

import torch
from PIL import Image

from qwenvl_data._constants import VIDEO_FPS
from qwenvl_data.datasets._paths import resolve_media_path
from qwenvl_data.errors import ImageLoadError

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".flv", ".mpeg", ".mpg")

ImageValue = Image.Image | bytes | str


def _decode_data_url(url: str) -> bytes:
    header, _, payload = url.partition(",")
    if ";base64" not in header:
        raise ImageLoadError(f"data URL {url[:40]!r}...: only base64 data URLs are supported")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ImageLoadError(f"data URL {url[:40]!r}...: invalid base64 ({err})") from err


def resolve_image(value: Any, image_dir: str) -> ImageValue:
    """One image reference from a record -> PIL image, bytes, or a safe absolute path.

    Args:
        value: a path (relative to ``image_dir``), a ``data:image/...;base64,`` URL, bytes, a PIL image,
            an HF ``datasets`` Image dict (``{"bytes": ..., "path": ...}``) or an OpenAI ``{"url": ...}``.
        image_dir: directory every path must stay inside.

    Returns:
        the value the image transform accepts.

    Raises:
        ImageLoadError: remote URLs, malformed data URLs, or a value of an unsupported type.
        UnsafePathError: a path that escapes ``image_dir``.
    """
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return bytes(value["bytes"])
        reference = value.get("path") or value.get("url")
        if reference is None:
            raise ImageLoadError(f"image dict with neither bytes, path nor url: keys {sorted(value)}")
        return resolve_image(reference, image_dir)
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        if text.startswith("data:"):
            return _decode_data_url(text)
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text):
            raise ImageLoadError(f"image {text!r}: remote URLs are not fetched; download the file under image_dir")
        return resolve_media_path(text, image_dir)
    raise ImageLoadError(f"unsupported image value of type {type(value).__name__}")


def _natural_key(name: str) -> list:
    """Sort frame_2.jpg before frame_10.jpg."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def resolve_video(value: Any, image_dir: str, fps: float | None = None) -> tuple[list | torch.Tensor, float]:
    """One video reference -> (frames, fps) for the transform's ``{"type": "video", "video": frames, "fps": fps}``.

    Args:
        value: a list of frame references (each as in ``resolve_image``), a directory of frame files
            (sorted naturally by name), a video file or its bytes (decoded with PyAV, sampled at ``fps``), or a
            uint8 tensor [T, C, H, W].
        image_dir: directory every path must stay inside.
        fps: frame rate of the given frames (lists, directories, tensors) or the sampling rate for video
            files; default ``VIDEO_FPS`` (2.0).

    Returns:
        (frames, fps): frames as a list of PIL images / bytes / paths, or the tensor unchanged.
    """
    fps = VIDEO_FPS if fps is None else float(fps)
    if isinstance(value, torch.Tensor):
        return value, fps
    if isinstance(value, (bytes, bytearray, memoryview)):  # an encoded file, e.g. a WebDataset .mp4 member
        from qwenvl_data.datasets._video import decode_video_file

        return decode_video_file(bytes(value), fps)
    if isinstance(value, (list, tuple)):
        if not value:
            raise ImageLoadError("video with no frames")
        return [resolve_image(frame, image_dir) for frame in value], fps
    if not isinstance(value, (str, os.PathLike)):
        raise ImageLoadError(f"unsupported video value of type {type(value).__name__}")
    path = resolve_media_path(value, image_dir)
    if os.path.isdir(path):
        names = sorted((n for n in os.listdir(path) if n.lower().endswith(FRAME_EXTENSIONS)), key=_natural_key)
        if not names:
            raise ImageLoadError(f"video frame directory {path!r} holds no frame files {FRAME_EXTENSIONS}")
        return [os.path.join(path, n) for n in names], fps
    if path.lower().endswith(VIDEO_EXTENSIONS):
        from qwenvl_data.datasets._video import decode_video_file

        return decode_video_file(path, fps)
    if not os.path.exists(path):
        raise ImageLoadError(f"video {path!r} does not exist")
    raise ImageLoadError(f"video {path!r} is neither a frame directory nor a video file {VIDEO_EXTENSIONS}")
