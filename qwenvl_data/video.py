"""Video input: a clip as a list of RGB frames of one size, padded to whole temporal patches, and the options
that choose frames from a video file and size them (qwen-vl-utils' names and defaults)."""

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image

from qwenvl_data._constants import (
    VIDEO_FPS,
    VIDEO_MAX_FRAMES,
    VIDEO_MAX_PIXELS,
    VIDEO_MIN_FRAMES,
    VIDEO_MIN_PIXELS,
    VIDEO_TOTAL_PIXELS,
)
from qwenvl_data.vision._image_io import ImageSource, load_image, to_rgb
from qwenvl_data.errors import ImageLoadError, VideoLoadError

VideoSource = Sequence[ImageSource] | torch.Tensor | str | os.PathLike

# Options that only make sense for a video file: they choose which of its frames are decoded.
FILE_ONLY_OPTIONS = ("nframes", "video_start", "video_end")
SAMPLING_RULES = ("qwen_vl_utils", "transformers")


@dataclasses.dataclass(frozen=True)
class VideoRule:
    """How a model family's processor samples a video file, sizes its frames and writes the video in the text
    (``ModelFamily.video_rule``); the defaults are Qwen2/2.5-VL's.

    Attributes:
        sampling: how many frames of a file's window are kept: ``"qwen_vl_utils"`` (qwen-vl-utils'
            ``smart_nframes``: a multiple of 2) or ``"transformers"`` (transformers 5.24's
            ``Qwen3VLVideoProcessor.sample_frames``: ``int(seconds * fps)`` bounded by ``min_frames``, ``max_frames``
            and the frames there are, any count; ``nframes`` as given). Both spread the kept frames evenly.
        clip_budget: ``min_pixels``/``max_pixels`` bound the whole clip (frames x height x width: transformers'
            Qwen3-VL video ``smart_resize``) instead of one frame (qwen-vl-utils, with ``total_pixels``).
        timestamps: each temporal patch is written ``<{t:.1f} seconds><|vision_start|>{pads}<|vision_end|>`` in
            place of the template's one ``<|vision_start|><|video_pad|><|vision_end|>`` (Qwen3-VL), ``t`` the mean
            time of the patch's first and last frame.

    Raises:
        ValueError: an unknown ``sampling``.
    """

    sampling: str = "qwen_vl_utils"
    clip_budget: bool = False
    timestamps: bool = False

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLING_RULES:
            raise ValueError(f"video sampling must be one of {SAMPLING_RULES}, got {self.sampling!r}")


@dataclasses.dataclass(frozen=True)
class VideoOptions:
    """How frames are chosen from a clip and how large each may be; the keys of a video content part.

    Names and defaults are qwen-vl-utils' (``fetch_video``), so ``{"type": "video", "video": "clip.mp4",
    "fps": 1, "max_frames": 64, "video_start": 3.5, "video_end": 9}`` means what it means there.

    Args:
        fps (float): frames per second to sample from a video file; for frames given as a list or tensor,
            the rate they were taken at. Default 2.0.
        nframes (int | None): keep exactly this many frames (rounded to a multiple of 2) instead of ``fps``.
        min_frames (int): fewest frames sampled by ``fps`` (if the clip has them). Default 4.
        max_frames (int): most frames sampled by ``fps``. Default 768.
        video_start (float | None): start of the window in seconds. Default: the clip's start.
        video_end (float | None): end of the window in seconds (clamped to the clip). Default: its end.
        min_pixels (int): smallest pixel count of a frame. Default 128*28*28.
        max_pixels (int): largest pixel count of a frame. Default 768*28*28.
        total_pixels (int | None): budget of the whole clip: the per-frame maximum is lowered to
            ``total_pixels / frames * 2`` (not below 1.05 x ``min_pixels``). Default 90316800
            (qwen-vl-utils'); None for no budget.
        allow_truncated (bool): a file damaged part-way through gives the frames before the damage (sampled
            over that part) instead of an error. Default False.

    Raises:
        ValueError: an option out of range (named).
    """

    fps: float = VIDEO_FPS
    nframes: int | None = None
    min_frames: int = VIDEO_MIN_FRAMES
    max_frames: int = VIDEO_MAX_FRAMES
    video_start: float | None = None
    video_end: float | None = None
    min_pixels: int = VIDEO_MIN_PIXELS
    max_pixels: int = VIDEO_MAX_PIXELS
    total_pixels: int | None = VIDEO_TOTAL_PIXELS
    allow_truncated: bool = False

    def __post_init__(self) -> None:
        checks = (
            ("fps", self.fps > 0, "> 0"),
            ("nframes", self.nframes is None or self.nframes >= 1, ">= 1"),
            ("min_frames", self.min_frames >= 1, ">= 1"),
            ("max_frames", self.max_frames >= 2, ">= 2"),
            ("video_start", self.video_start is None or self.video_start >= 0, ">= 0"),
            ("min_pixels", 0 < self.min_pixels <= self.max_pixels, "> 0 and <= max_pixels"),
            ("total_pixels", self.total_pixels is None or self.total_pixels > 0, "> 0"),
        )
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"video option {name} must be {rule}, got {getattr(self, name)!r}")

    def updated(self, overrides: Mapping[str, Any]) -> "VideoOptions":
        """These options with ``overrides`` (a content part's or a dataset's keys) applied; None values are
        ignored. Raises ValueError naming any key that is not an option."""
        names = {field.name for field in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown video option(s) {unknown}; valid: {sorted(names)}")
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


VIDEO_OPTION_KEYS = tuple(field.name for field in dataclasses.fields(VideoOptions))


def is_video_file(video: object) -> bool:
    """True for a path (str / PathLike) that names a video file, or an encoded file's bytes, rather than frames."""
    return isinstance(video, (str, os.PathLike, bytes))


def video_frames(video: Sequence[ImageSource] | torch.Tensor) -> list[Image.Image]:
    """The frames of ``video`` as RGB PIL images, all of one size.

    Args:
        video (Sequence[PIL.Image.Image | str | os.PathLike | bytes] | torch.Tensor): frames (images or their
            files, loaded with ``load_image``) or uint8 [T, C, H, W] with C in (1, 3, 4).

    Returns:
        list[PIL.Image.Image]: T frames in mode "RGB".

    Raises:
        ImageLoadError: no frames, frames of different sizes, or a frame file that cannot be loaded.
        ValueError: a tensor that is not uint8 [T, C, H, W].
    """
    if isinstance(video, torch.Tensor):
        if video.dim() != 4:
            raise ValueError(f"a video tensor must be uint8 [T, C, H, W], got shape {list(video.shape)}")
        frames = [to_rgb(frame) for frame in video]
    else:
        frames = [to_rgb(load_image(frame)) for frame in video]
    if not frames:
        raise VideoLoadError("a video needs at least one frame, got none")
    sizes = {frame.size for frame in frames}
    if len(sizes) > 1:
        raise VideoLoadError(f"all frames of a video must have one size, got (width, height) {sorted(sizes)}")
    return frames


def pad_to_temporal_patches(frames: list[Image.Image], temporal_patch_size: int) -> list[Image.Image]:
    """``frames`` with the last one repeated until their count is a multiple of ``temporal_patch_size``."""
    return frames + [frames[-1]] * (-len(frames) % temporal_patch_size)


def patch_timestamps(times: Sequence[float], temporal_patch_size: int) -> list[float]:
    """Seconds of each temporal patch: the mean of its first and last frame's time, the last frame's time repeated
    to fill the last patch (transformers 5.24's ``Qwen3VLProcessor._calculate_timestamps``, same arithmetic).

    Args:
        times: each kept frame's time in seconds (``index / fps``).
        temporal_patch_size: frames per temporal patch.

    Returns:
        one time per temporal patch, ``ceil(len(times) / temporal_patch_size)`` of them.
    """
    padded = list(times) + [times[-1]] * (-len(times) % temporal_patch_size)
    return [
        (padded[i] + padded[i + temporal_patch_size - 1]) / 2 for i in range(0, len(padded), temporal_patch_size)
    ]
