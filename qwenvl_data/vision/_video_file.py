"""Reading the kept frames of a video file with PyAV (FFmpeg), and nothing else.

The file is first demuxed without decoding (packets only: every frame's timestamp and which are keyframes),
the frames to keep are chosen from those timestamps (``_video_sampling``), and then only the stretches
of the stream that lead to a kept frame are decoded: a seek to the keyframe before it when that skips
work, decoding forward otherwise. Decoded frames that are not kept are dropped at once, so memory holds
the kept frames plus one decoder's state, whatever the clip's length.
"""

import io
import os
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import av
from PIL import Image

from qwenvl_data.vision._resize import resize_rgb
from qwenvl_data.vision._video_sampling import frame_count, frame_window, pick_frames
from qwenvl_data.errors import VideoLoadError
from qwenvl_data.video import VideoOptions

# FFmpeg opens whatever a file refers to when its demuxer follows references (an HLS playlist's segments, a
# concat list's files, image sequences): only the container demuxers of real video files may be picked, and
# only the file protocol, so nothing is opened but the file that passed the media checks.
DEMUXERS = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,flv,mpeg,mpegts,ogg"
_RESTRICTED = {"format_whitelist": DEMUXERS, "protocol_whitelist": "file"}
TIMEOUT_S = 60.0  # any single open or read that stalls longer (a hung network mount) fails, naming the file

_ROTATIONS = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


@dataclass(frozen=True)
class _Index:
    """What demuxing told us: frame timestamps (stream time base, ascending), keyframe timestamps, the frame
    rate, and why the stream became unreadable part-way (None when it did not)."""

    pts: list[int]
    keyframes: list[int]
    time_base: Fraction
    average_rate: Fraction
    damage: str | None


class _Damaged(Exception):
    """Decoding failed at frame ``index`` (the frames before it are good)."""

    def __init__(self, index: int, cause: str) -> None:
        super().__init__(cause)
        self.index, self.cause = index, cause


FrameSize = Callable[[int, int, int], tuple[int, int]]


def read_video_file(
    path: str | os.PathLike | bytes,
    options: VideoOptions,
    frame_size: FrameSize | None = None,
    *,
    sampling: str = "qwen_vl_utils",
) -> tuple[list[Image.Image], float, list[float]]:
    """The frames of a video file that ``options`` keep, upright, and the rate they were sampled at.

    Frame selection (see ``qwenvl_data.vision._video_sampling``, after qwen-vl-utils): the window
    [``video_start``, ``video_end``], then ``nframes`` or ``fps`` bounded by ``min_frames``/``max_frames``,
    rounded to a multiple of 2, spread evenly over the window. The display rotation stored with the stream
    (a phone's portrait clip) is applied, as images follow their EXIF orientation.

    Args:
        path: a video file FFmpeg can read (mp4, mkv, webm, mov, avi, ...), or such a file's bytes (a
            WebDataset shard's ``.mp4`` member).
        options: the selection options; the pixel options are applied later, by the image transform.
        frame_size: ``(kept count, height, width) -> (height, width)``: each kept frame is resized to it
            (PIL bicubic) as soon as it is decoded, so only output-sized frames are held. None: full size.
        sampling: the count rule, a ``VideoRule.sampling`` (``"qwen_vl_utils"`` or ``"transformers"``).

    Returns:
        (frames, sample_fps, times): RGB PIL images in time order; ``len(frames) / window_frames *
        native_fps``, the rate actually sampled (qwen-vl-utils' ``sample_fps``), which sets
        ``second_per_grid_ts``; and each kept frame's time in the file, ``index / native_fps`` (what
        transformers' Qwen3-VL timestamps are made of, its ``frames_indices / fps``).

    Raises:
        VideoLoadError: the file is missing, not a video, has no video stream or no frames, is damaged
            (unless ``allow_truncated``), or the window lies outside the clip; the message names the file.
    """
    if isinstance(path, bytes):
        source, name = path, f"({len(path)} bytes)"
    else:
        source = name = os.fspath(path)
        if not os.path.isfile(name):
            reason = "does not exist" if not os.path.exists(name) else "is not a regular file"
            raise VideoLoadError(f"video file {name} {reason}")
    try:
        with _open(source, name) as container:
            if not container.streams.video:
                kinds = sorted({stream.type for stream in container.streams}) or ["none"]
                raise VideoLoadError(f"video file {name} has no video stream (streams: {', '.join(kinds)})")
            stream = container.streams.video[0]
            index = _demux(container, stream)
            if not index.pts:
                detail = f": {index.damage}" if index.damage else ""
                raise VideoLoadError(f"video file {name} has no video frames{detail}")
            if index.damage and not options.allow_truncated:
                raise VideoLoadError(f"video file {name} is damaged after frame {len(index.pts)}: {index.damage}")
            try:
                return _read_kept(container, stream, index, len(index.pts), options, frame_size, name, sampling)
            except _Damaged as damage:
                if not options.allow_truncated or damage.index == 0:
                    seconds = float((index.pts[damage.index] - index.pts[0]) * index.time_base)
                    raise VideoLoadError(
                        f"video file {name} is damaged at frame {damage.index} of {len(index.pts)} "
                        f"({seconds:.3f} s): {damage.cause}"
                    ) from None
                usable = damage.index
        # Frames before the damage only, from a fresh decoder (one that met the damage keeps some of it).
        with _open(source, name) as container:
            return _read_kept(container, container.streams.video[0], index, usable, options, frame_size, name,
                              sampling)  # fmt: skip
    except av.error.FFmpegError as error:
        raise VideoLoadError(f"video file {name} cannot be decoded: {error}") from error


def _open(source: str | bytes, name: str) -> av.container.InputContainer:
    """The opened file (or bytes), restricted to ``DEMUXERS`` and the file protocol with a ``TIMEOUT_S`` bound
    per operation, or an VideoLoadError saying why FFmpeg cannot open it."""
    try:
        return av.open(io.BytesIO(source) if isinstance(source, bytes) else source, options=_RESTRICTED,
                       timeout=TIMEOUT_S)  # fmt: skip
    except av.error.EOFError as error:
        raise VideoLoadError(f"video file {name} has no video frames (it ends before the first one)") from error
    except av.error.FFmpegError as error:
        raise VideoLoadError(f"video file {name} is not a video FFmpeg can read (only the container formats "
                             f"{DEMUXERS} are opened): {error}") from error  # fmt: skip


def _read_kept(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    index: _Index,
    usable: int,
    options: VideoOptions,
    frame_size: FrameSize | None,
    name: str,
    sampling: str,
) -> tuple[list[Image.Image], float, list[float]]:
    """Select among the first ``usable`` frames and decode the kept ones (``_Damaged`` on damage)."""
    times = [(pts - index.pts[0]) * index.time_base for pts in index.pts[:usable]]
    duration = Fraction(usable) / index.average_rate
    try:
        first, last = frame_window(times, options.video_start, options.video_end, duration)
        window_frames = last - first + 1
        count = frame_count(
            window_frames,
            float(index.average_rate),
            fps=options.fps,
            nframes=options.nframes,
            min_frames=options.min_frames,
            max_frames=options.max_frames,
            sampling=sampling,
        )
    except ValueError as error:
        raise VideoLoadError(f"video file {name}: {error}") from error
    picks = pick_frames(times, first, last, count)

    def fit(image: Image.Image) -> Image.Image:
        return image if frame_size is None else resize_rgb(image, *frame_size(count, image.height, image.width))

    decoded = _decode(container, stream, index, sorted(set(picks)), fit)
    native_fps = float(index.average_rate)
    return [decoded[i] for i in picks], count / window_frames * native_fps, [i / native_fps for i in picks]


def _demux(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> _Index:
    """Timestamps of every frame and keyframe, read from the packets without decoding them."""
    pts, keyframes, damage = [], [], None
    try:
        for packet in container.demux(stream):
            if packet.size == 0:  # the end-of-stream flush packet
                continue
            stamp = packet.pts if packet.pts is not None else packet.dts
            if stamp is None:
                raise VideoLoadError(f"video packet {len(pts)} has no timestamp")
            pts.append(stamp)
            if packet.is_keyframe:
                keyframes.append(stamp)
    except av.error.FFmpegError as error:
        damage = str(error)
    pts = sorted(set(pts))  # presentation order; a repeated timestamp would be the same frame shown twice
    keyframes = sorted(set(keyframes))
    time_base = Fraction(stream.time_base or 1)
    # The rate the timestamps show (exact for a constant rate; the true mean for a variable one); the
    # container's stated rate only for a single frame.
    if len(pts) > 1 and pts[-1] > pts[0]:
        rate = Fraction(len(pts) - 1) / ((pts[-1] - pts[0]) * time_base)
    else:
        rate = Fraction(stream.average_rate or stream.guessed_rate or 1)
    return _Index(pts, keyframes, time_base, rate, damage)


def _decode(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    index: _Index,
    wanted: list[int],
    fit: Callable[[Image.Image], Image.Image],
) -> dict[int, Image.Image]:
    """Decode the frames at positions ``wanted`` (ascending): seek to a frame's keyframe when the decoder is
    not already past it, decode forward to the frame, convert it alone to RGB and ``fit`` it."""
    position = {pts: i for i, pts in enumerate(index.pts)}
    out: dict[int, Image.Image] = {}
    frames = None
    current = -1  # index of the last frame decoded
    for target in wanted:
        keyframe = index.keyframes[max(bisect_right(index.keyframes, index.pts[target]) - 1, 0)] if index.keyframes else None
        if frames is None or (keyframe is not None and position.get(keyframe, -1) > current):
            container.seek(keyframe if keyframe is not None else index.pts[0], stream=stream, backward=True)
            frames = container.decode(stream)
            current = -1
        while current < target:
            try:
                frame = next(frames)
            except StopIteration:
                raise _Damaged(current + 1, "the stream ends before this frame") from None
            except av.error.FFmpegError as error:
                raise _Damaged(current + 1, str(error)) from None
            current = position.get(frame.pts, current + 1)
            if frame.is_corrupt:
                raise _Damaged(current, "the decoder reports a corrupt frame")
            if current == target:
                out[target] = fit(_upright(frame))
        if target not in out:
            raise _Damaged(target, "the decoder did not produce this frame")
    return out


def _upright(frame: av.VideoFrame) -> Image.Image:
    """The frame as an RGB image turned by its display rotation (counter-clockwise degrees, as FFmpeg's
    display matrix gives it and as its players apply it)."""
    image = frame.to_image()
    rotation = frame.rotation % 360
    return image.transpose(_ROTATIONS[rotation]) if rotation in _ROTATIONS else image
