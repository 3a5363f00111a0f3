"""Video files through PyAV (the optional ``video`` extra): decode and sample frames at a target fps."""

import io

import numpy as np
from PIL import Image

from qwenvl_data.errors import ImageLoadError


def decode_video_file(path: str | bytes, fps: float) -> tuple[list[Image.Image], float]:
    """Decode ``path`` and keep frames evenly spaced at ``fps`` frames per second of video.

    The kept count is rounded to an even number (at least 2) because the model groups frames in pairs
    (temporal patch size 2); frames are picked uniformly over the whole clip.

    Args:
        path: a video file readable by FFmpeg, or the file's bytes.
        fps: frames per second of video to keep.

    Returns:
        (RGB PIL frames in time order, the rate they were kept at: ``fps`` unless the clip has fewer frames).

    Raises:
        ImportError: PyAV is not installed (``pip install qwenvl_data[video]``).
        ImageLoadError: the file is missing, not a video, or has no decodable frames.
    """
    name = f"<{len(path)} bytes>" if isinstance(path, bytes) else path
    try:
        import av
    except ImportError as err:
        raise ImportError(f"reading video file {name!r} needs PyAV: pip install 'qwenvl_data[video]'") from err
    try:
        with av.open(io.BytesIO(path) if isinstance(path, bytes) else path) as container:
            stream = container.streams.video[0]
            frames = [frame.to_image() for frame in container.decode(stream)]
            native_fps = float(stream.average_rate or 0) or None
    except (av.error.FFmpegError, IndexError, OSError) as err:
        raise ImageLoadError(f"video {name!r} cannot be decoded: {err}") from err
    if not frames:
        raise ImageLoadError(f"video {name!r} has no frames")
    duration = len(frames) / native_fps if native_fps else len(frames) / fps
    wanted = max(2, int(round(duration * fps / 2)) * 2)
    picks = np.linspace(0, len(frames) - 1, min(wanted, len(frames))).round().astype(int)
    return [frames[i].convert("RGB") for i in picks], len(picks) / duration
