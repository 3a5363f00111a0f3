"""The Qwen2.5-VL image and video transform: pixels in, normalized patches and their grid out.

Matches the released checkpoints' preprocessing (transformers' ``Qwen2VLImageProcessorPil``) bit for bit:
convert to RGB (transparency onto white), resize with PIL bicubic to ``smart_resize``'s size, rescale to [0, 1],
normalize with the CLIP mean/std, cut into 14x14 patches ordered by 2x2 merge blocks, and repeat an image over
the two temporal slots of a patch. Video frames go through the same steps with the video pixel budget;
video files are sampled by qwen-vl-utils' rules (``qwenvl_data.video.VideoOptions``), decoding only the kept
frames. Departures, documented where they happen: files are turned upright by their EXIF orientation
(``load_image``), and 16-bit images are scaled to 8 bits where PIL and the reference clip them (``to_rgb``).
"""

import os
from collections.abc import MutableMapping, Sequence
from typing import Any

import torch
from PIL import Image

from qwenvl_data._constants import (
    IMAGE_MAX_PIXELS,
    IMAGE_MIN_PIXELS,
    MERGE_SIZE,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    PATCH_SIZE,
    TEMPORAL_PATCH_SIZE,
)
from qwenvl_data.vision._image_io import ImageSource, load_image, to_rgb
from qwenvl_data.vision._media_options import ImageOptions, held_options
from qwenvl_data.vision._media_refs import media_file, shown
from qwenvl_data.vision._patchify import OUTPUT_DTYPES, patchify
from qwenvl_data.vision._resize import clip_smart_resize, resize_rgb, smart_resize
from qwenvl_data.vision._video_file import read_video_file
from qwenvl_data.vision._video_sampling import frame_max_pixels
from qwenvl_data.errors import ImageLoadError, SampleError
from qwenvl_data.video import (
    FILE_ONLY_OPTIONS,
    VideoOptions,
    VideoRule,
    VideoSource,
    is_video_file,
    pad_to_temporal_patches,
    patch_timestamps,
    video_frames,
)

__all__ = ["Qwen2_5_VLImageTransform", "load_image", "smart_resize"]

_VIDEO = VideoOptions()  # qwen-vl-utils' video defaults, the transform's unless overridden


class Qwen2_5_VLImageTransform:
    """Adds the vision encoder's inputs for ``sample["image"]`` and/or ``sample["video"]`` to a sample.

    Images from files are turned upright by their EXIF orientation (see ``load_image``); PIL images and
    tensors are used as given. Two departures from the reference, both on purpose: that EXIF orientation, and
    16-bit images scaled to 8 bits instead of clipped to near-white (see ``to_rgb``).

    Args:
        patch_size (int): side of a patch in pixels.
        merge_size (int): side of the block of patches merged into one LLM token.
        temporal_patch_size (int): frames per temporal patch (an image fills all of them).
        min_pixels (int): image pixel budget, lower end (``smart_resize``); an image's own ``min_pixels`` wins.
        max_pixels (int): image pixel budget, upper end; the released checkpoints' config uses 12845056. An
            image's own ``max_pixels`` (or ``resized_height``/``resized_width``) wins, see ``ImageOptions``.
        video_min_pixels (int): per-frame pixel budget of videos, lower end (a video part's ``min_pixels``).
        video_max_pixels (int): per-frame pixel budget of videos, upper end (a video part's ``max_pixels``).
        video_total_pixels (int | None): pixel budget of a whole clip (a part's ``total_pixels``), None for none.
        video_fps (float): default sampling rate of video files, and rate of clips given as frames.
        video_min_frames (int): fewest frames sampled from a video file by ``fps``.
        video_max_frames (int): most frames sampled from a video file by ``fps``.
        image_mean (Sequence[float]): per-channel mean of the [0, 1] pixels.
        image_std (Sequence[float]): per-channel std.
        dtype (torch.dtype): dtype of ``pixel_values``/``pixel_values_videos``; bfloat16 equals the float32
            result cast to bfloat16.
        video_rule (VideoRule): how video files are sampled, frames sized and videos written in the text (the
            family's, ``ModelFamily.video_rule``); default Qwen2/2.5-VL's (qwen-vl-utils).

    Example:
        >>> transform = Qwen2_5_VLImageTransform()
        >>> out = transform({"image": Image.new("RGB", (640, 480))})
        >>> out["pixel_values"].shape, out["image_grid_thw"].tolist()
        (torch.Size([1564, 1176]), [[1, 34, 46]])
    """

    def __init__(
        self,
        patch_size: int = PATCH_SIZE,
        merge_size: int = MERGE_SIZE,
        temporal_patch_size: int = TEMPORAL_PATCH_SIZE,
        min_pixels: int = IMAGE_MIN_PIXELS,
        max_pixels: int = IMAGE_MAX_PIXELS,
        video_min_pixels: int = _VIDEO.min_pixels,
        video_max_pixels: int = _VIDEO.max_pixels,
        video_total_pixels: int | None = _VIDEO.total_pixels,
        video_fps: float = _VIDEO.fps,
        video_min_frames: int = _VIDEO.min_frames,
        video_max_frames: int = _VIDEO.max_frames,
        image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
        image_std: Sequence[float] = OPENAI_CLIP_STD,
        dtype: torch.dtype = torch.float32,
        video_rule: VideoRule = VideoRule(),
    ) -> None:
        if not 0 < min_pixels <= max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {min_pixels} and {max_pixels}")
        if dtype not in OUTPUT_DTYPES:
            raise ValueError(f"dtype must be one of {OUTPUT_DTYPES}, got {dtype}")
        if video_rule.clip_budget and video_total_pixels is not None:
            raise ValueError("video_total_pixels is qwen-vl-utils' per-frame rule; with video_rule.clip_budget, "
                             "video_max_pixels bounds the clip: pass video_total_pixels=None")  # fmt: skip
        self.patch_size = patch_size
        self.merge_size = merge_size
        self.temporal_patch_size = temporal_patch_size
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.video_options = VideoOptions(
            fps=video_fps,
            min_frames=video_min_frames,
            max_frames=video_max_frames,
            min_pixels=video_min_pixels,
            max_pixels=video_max_pixels,
            total_pixels=video_total_pixels,
        )
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.dtype = dtype
        self.video_rule = video_rule

    def __call__(self, sample: dict) -> dict:
        """Returns ``sample`` with, for an ``"image"``, ``pixel_values`` [N, 1176] and ``image_grid_thw``
        int64 [1, 3]; for a ``"video"``, ``pixel_values_videos`` [N, 1176], ``video_grid_thw`` int64 [1, 3] and
        ``second_per_grid_ts`` float32 [1], and under a ``video_rule`` with timestamps ``video_timestamps``
        (list[float], seconds of each temporal patch, for the text). Options beside the image (``ImageOptions``
        keys) or the video
        (``VideoOptions`` keys: ``"fps"``, ``"max_frames"``, ...) apply to it; a key is set when its value is not
        None. A sample holding both an image and a video cannot say whose ``min_pixels``/``max_pixels`` it sets:
        give each its own sample.

        Raises:
            TypeError: ``sample`` is not a dict (a bare image or path: wrap it as ``{"image": ...}``, or call
                ``encode_image``).
            ValueError: options beside both an image and a video, or a sample holding neither.
        """
        if not isinstance(sample, MutableMapping):
            raise TypeError(
                f"Qwen2_5_VLImageTransform takes a sample dict {{'image': ...}} or {{'video': ...}} (plus options), "
                f"got {type(sample).__name__}: call transform({{'image': value}}) or transform.encode_image(value)"
            )
        image, video = sample.get("image"), sample.get("video")
        if image is None and video is None:
            raise ValueError(f"the sample holds no 'image' or 'video' to transform (keys: {sorted(map(str, sample))})")
        if image is not None and video is not None and held_options(sample, "image"):
            raise ValueError("a sample with both an image and a video cannot carry options; transform them apart")
        if image is not None:
            sample["pixel_values"], sample["image_grid_thw"] = self.encode_image(image, **held_options(sample, "image"))
        if video is not None:
            *encoded, timestamps = self._encode_video(video, **held_options(sample, "video"))
            sample["pixel_values_videos"], sample["video_grid_thw"], sample["second_per_grid_ts"] = encoded
            if self.video_rule.timestamps:
                sample["video_timestamps"] = timestamps
        return sample

    def encode_image(self, image: ImageSource | torch.Tensor, **options: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Patches of one image.

        Args:
            image (PIL.Image.Image | str | os.PathLike | bytes | dict | torch.Tensor): a PIL image, any media
                reference ``load_image`` takes (path, ``file://`` URI, data URL, bytes, HF image dict), or uint8
                [C, H, W] with C in (1, 3, 4). 16-bit images are scaled to 8 bits first (see ``to_rgb``).
            **options: ``ImageOptions`` keys of this image (``min_pixels``, ``max_pixels``, ``resized_height``,
                ``resized_width``, qwen-vl-utils' rules) over this transform's budgets. The pixels equal the
                reference processor's run with the budgets used.

        Returns:
            tuple[torch.Tensor, torch.Tensor]: ``pixel_values`` dtype [N, 1176] and ``image_grid_thw`` int64
            [1, 3] = [[1, H, W]] with N = H * W.

        Raises:
            ImageLoadError: the reference cannot be loaded, the image's mode has no known range (``F``, wide
                ``I``), or the image is too elongated (over 200:1) or empty.
            SampleError: an unknown or invalid option.
        """
        try:
            chosen = ImageOptions(**options)
        except (TypeError, ValueError) as error:
            raise SampleError(f"{_describe(image)}: {error}") from error
        loaded = image if isinstance(image, torch.Tensor) else load_image(image)
        try:
            rgb = to_rgb(loaded)
        except ImageLoadError as error:  # a refused mode: say which image has it
            raise ImageLoadError(f"{_describe(image)}: {error}") from error
        try:
            factor = self.patch_size * self.merge_size
            size = chosen.size(rgb.height, rgb.width, factor, self.min_pixels, self.max_pixels)
        except ValueError as error:
            raise ImageLoadError(f"{_describe(image)}: {error}") from error
        return self._encode([rgb] * self.temporal_patch_size, size)

    def encode_video(
        self, video: VideoSource, fps: float | None = None, **options: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Patches of one video clip.

        Args:
            video (str | os.PathLike | Sequence[PIL.Image.Image | str | os.PathLike | bytes] | torch.Tensor): a
                video file (only the frames kept are decoded, see ``VideoOptions``), or its frames (images or
                image files) or uint8 [T, C, H, W], used as given.
            fps (float | None): for a file, the sampling rate; for frames, the rate they were taken at
                (after any sampling). Default: this transform's ``video_fps`` (2.0).
            **options: other ``VideoOptions`` keys (``nframes``, ``min_frames``, ``max_frames``,
                ``video_start``, ``video_end``, ``min_pixels``, ``max_pixels``, ``total_pixels``,
                ``allow_truncated``) over this transform's defaults; the frame-choosing ones
                (``nframes``, ``video_start``, ``video_end``) need a file.

        Returns:
            tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ``pixel_values_videos`` dtype [N, 1176],
            ``video_grid_thw`` int64 [1, 3] = [[T', H, W]] with T' = ceil(T / temporal_patch_size) and
            N = T' * H * W, and ``second_per_grid_ts`` float32 [1] = temporal_patch_size / fps, with the fps
            actually sampled for a file.

        Under a ``video_rule`` with ``clip_budget`` the pixel budget bounds the whole clip (``clip_smart_resize``
        of the kept frames), and ``total_pixels`` is refused. Frames given as a list or tensor are used as given,
        taken at ``fps`` (the part's, else ``video_fps``): frame ``i`` is at ``i / fps`` seconds, which is what
        Qwen3-VL's timestamps are made of (transformers would sample them again, assuming 24 fps).

        Raises:
            ImageLoadError: a file that cannot be read or whose window lies outside it, or bad frames.
            SampleError: an unknown or out-of-range option, or a frame-choosing option on frames.
        """
        return self._encode_video(video, fps, **options)[:3]

    def _encode_video(
        self, video: VideoSource, fps: float | None = None, **options: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[float]]:
        """``encode_video``'s outputs and the seconds of each temporal patch (``patch_timestamps``)."""
        try:
            chosen = self.video_options.updated({"fps": fps, **options})
        except ValueError as error:
            raise SampleError(str(error)) from error
        if self.video_rule.clip_budget and "total_pixels" in options and options["total_pixels"] is not None:
            raise SampleError("video option total_pixels is qwen-vl-utils' per-frame rule; under this model's video "
                              "rule max_pixels bounds the whole clip already")  # fmt: skip
        if is_video_file(video):
            if isinstance(video, bytes):
                name = f"video ({len(video)} bytes)"
            else:
                video = media_file(video, what="video")  # file:// URIs; FIFOs and folders refused before opening
                name = f"video {shown(video)}"

            def frame_size(count: int, height: int, width: int) -> tuple[int, int]:
                # Known before decoding, so each kept frame is shrunk as it is decoded: memory holds the
                # output's pixels, not the file's.
                return self._video_frame_size(count, height, width, chosen, name)

            frames, fps, times = read_video_file(video, chosen, frame_size, sampling=self.video_rule.sampling)
            size = frames[0].height, frames[0].width  # resized already (smart_resize is not idempotent)
        else:
            misplaced = [key for key in FILE_ONLY_OPTIONS if getattr(chosen, key) is not None]
            if misplaced:
                raise SampleError(f"video options {misplaced} choose frames of a video file; this video is given as frames")
            frames, fps = video_frames(video), chosen.fps
            times = [index / fps for index in range(len(frames))]
            size = self._video_frame_size(len(frames), frames[0].height, frames[0].width, chosen, "video")
        pixel_values, grid_thw = self._encode(pad_to_temporal_patches(frames, self.temporal_patch_size), size)
        second_per_grid_ts = torch.tensor([self.temporal_patch_size / fps], dtype=torch.float32)
        return pixel_values, grid_thw, second_per_grid_ts, patch_timestamps(times, self.temporal_patch_size)

    def _video_frame_size(
        self, count: int, height: int, width: int, options: VideoOptions, name: str
    ) -> tuple[int, int]:
        """Size of every frame of a clip of ``count`` frames: by the clip budget (``VideoRule.clip_budget``), or
        by the per-frame one lowered by ``total_pixels`` over the frames padded to whole temporal patches."""
        if self.video_rule.clip_budget:
            factor = self.patch_size * self.merge_size
            try:
                return clip_smart_resize(count, height, width, self.temporal_patch_size, factor, options.min_pixels,
                                         options.max_pixels)  # fmt: skip
            except ValueError as error:
                raise ImageLoadError(f"{name}: {error}") from error
        padded = count + -count % self.temporal_patch_size
        max_pixels = frame_max_pixels(padded, options.min_pixels, options.max_pixels, options.total_pixels)
        return self._frame_size(height, width, options.min_pixels, max_pixels, name)

    def _frame_size(self, height: int, width: int, min_pixels: int, max_pixels: float, name: str) -> tuple[int, int]:
        """``smart_resize`` with its error naming the image or video."""
        try:
            return smart_resize(height, width, self.patch_size * self.merge_size, min_pixels, max_pixels)
        except ValueError as error:
            raise ImageLoadError(f"{name}: {error}") from error

    def _encode(self, frames: list[Image.Image], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        resized_height, resized_width = size
        # A frame that fills several slots (an image, a padded last frame) is one object: resize it once.
        resized = {}
        for frame in frames:
            if id(frame) not in resized:
                resized[id(frame)] = resize_rgb(frame, resized_height, resized_width)
        pixel_values = patchify(
            [resized[id(frame)] for frame in frames],
            patch_size=self.patch_size,
            merge_size=self.merge_size,
            temporal_patch_size=self.temporal_patch_size,
            mean=self.image_mean,
            std=self.image_std,
            dtype=self.dtype,
        )
        grid_t = len(frames) // self.temporal_patch_size
        grid_thw = torch.tensor([[grid_t, resized_height // self.patch_size, resized_width // self.patch_size]])
        return pixel_values, grid_thw


def _describe(image: object) -> str:
    """How an error message names an image: its path, or its kind when it has none."""
    if isinstance(image, (str, os.PathLike)):
        return f"image {shown(os.fspath(image))}"
    return f"image ({type(image).__name__})"
