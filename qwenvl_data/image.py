"""The Qwen2.5-VL image and video transform: pixels in, normalized patches and their grid out.

Matches the released checkpoints' preprocessing (transformers' ``Qwen2VLImageProcessorPil``) bit for bit:
convert to RGB (transparency onto white), resize with PIL bicubic to ``smart_resize``'s size, rescale to [0, 1],
normalize with the CLIP mean/std, cut into 14x14 patches ordered by 2x2 merge blocks, and repeat an image over
the two temporal slots of a patch. Video frames go through the same steps with the video pixel budget.
Departures, documented where they happen: files are turned upright by their EXIF orientation (``load_image``),
and 16-bit images are scaled to 8 bits where PIL and the reference clip them (``to_rgb``).
"""

import os
from collections.abc import Sequence

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
    VIDEO_FPS,
    VIDEO_MAX_PIXELS,
    VIDEO_MIN_PIXELS,
)
from qwenvl_data._image_io import ImageSource, load_image, to_rgb
from qwenvl_data._media_refs import shown
from qwenvl_data._patchify import OUTPUT_DTYPES, patchify
from qwenvl_data._resize import resize_rgb, smart_resize
from qwenvl_data.errors import ImageLoadError
from qwenvl_data.video import pad_to_temporal_patches, video_frames

__all__ = ["Qwen2_5_VLImageTransform", "load_image", "smart_resize"]


class Qwen2_5_VLImageTransform:
    """Adds the vision encoder's inputs for ``sample["image"]`` and/or ``sample["video"]`` to a sample.

    Images from files are turned upright by their EXIF orientation (see ``load_image``); PIL images and
    tensors are used as given. Two departures from the reference, both on purpose: that EXIF orientation, and
    16-bit images scaled to 8 bits instead of clipped to near-white (see ``to_rgb``).

    Args:
        patch_size (int): side of a patch in pixels.
        merge_size (int): side of the block of patches merged into one LLM token.
        temporal_patch_size (int): frames per temporal patch (an image fills all of them).
        min_pixels (int): image pixel budget, lower end (``smart_resize``).
        max_pixels (int): image pixel budget, upper end; the released checkpoints' config uses 12845056.
        video_min_pixels (int): per-frame pixel budget of videos, lower end.
        video_max_pixels (int): per-frame pixel budget of videos, upper end.
        image_mean (Sequence[float]): per-channel mean of the [0, 1] pixels.
        image_std (Sequence[float]): per-channel std.
        dtype (torch.dtype): dtype of ``pixel_values``/``pixel_values_videos``; bfloat16 equals the float32
            result cast to bfloat16.

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
        video_min_pixels: int = VIDEO_MIN_PIXELS,
        video_max_pixels: int = VIDEO_MAX_PIXELS,
        image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
        image_std: Sequence[float] = OPENAI_CLIP_STD,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        for name, low, high in (("", min_pixels, max_pixels), ("video_", video_min_pixels, video_max_pixels)):
            if not 0 < low <= high:
                raise ValueError(f"need 0 < {name}min_pixels <= {name}max_pixels, got {low} and {high}")
        if dtype not in OUTPUT_DTYPES:
            raise ValueError(f"dtype must be one of {OUTPUT_DTYPES}, got {dtype}")
        self.patch_size = patch_size
        self.merge_size = merge_size
        self.temporal_patch_size = temporal_patch_size
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.video_min_pixels, self.video_max_pixels = video_min_pixels, video_max_pixels
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.dtype = dtype

    def __call__(self, sample: dict) -> dict:
        """Returns ``sample`` with, for an ``"image"``, ``pixel_values`` [N, 1176] and ``image_grid_thw``
        int64 [1, 3]; for a ``"video"`` (with optional ``"fps"``, default 2.0), ``pixel_values_videos``
        [N, 1176], ``video_grid_thw`` int64 [1, 3] and ``second_per_grid_ts`` float32 [1]."""
        if "image" in sample:
            sample["pixel_values"], sample["image_grid_thw"] = self.encode_image(sample["image"])
        if "video" in sample:
            encoded = self.encode_video(sample["video"], sample.get("fps", VIDEO_FPS))
            sample["pixel_values_videos"], sample["video_grid_thw"], sample["second_per_grid_ts"] = encoded
        return sample

    def encode_image(self, image: ImageSource | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patches of one image.

        Args:
            image (PIL.Image.Image | str | os.PathLike | bytes | dict | torch.Tensor): a PIL image, any media
                reference ``load_image`` takes (path, ``file://`` URI, data URL, bytes, HF image dict), or uint8
                [C, H, W] with C in (1, 3, 4). 16-bit images are scaled to 8 bits first (see ``to_rgb``).

        Returns:
            tuple[torch.Tensor, torch.Tensor]: ``pixel_values`` dtype [N, 1176] and ``image_grid_thw`` int64
            [1, 3] = [[1, H, W]] with N = H * W.

        Raises:
            ImageLoadError: the reference cannot be loaded, the image's mode has no known range (``F``, wide
                ``I``), or the image is too elongated (over 200:1) or empty.
        """
        loaded = image if isinstance(image, torch.Tensor) else load_image(image)
        try:
            rgb = to_rgb(loaded)
        except ImageLoadError as error:  # a refused mode: say which image has it
            raise ImageLoadError(f"{_describe(image)}: {error}") from error
        return self._encode([rgb] * self.temporal_patch_size, self.min_pixels, self.max_pixels, _describe(image))

    def encode_video(
        self, video: Sequence[Image.Image | str | os.PathLike | bytes] | torch.Tensor, fps: float = VIDEO_FPS
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Patches of one video clip.

        Args:
            video (Sequence[PIL.Image.Image | str | os.PathLike | bytes] | torch.Tensor): frames or uint8
                [T, C, H, W].
            fps (float): frames per second of the given frames (after any sampling).

        Returns:
            tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ``pixel_values_videos`` dtype [N, 1176],
            ``video_grid_thw`` int64 [1, 3] = [[T', H, W]] with T' = ceil(T / temporal_patch_size) and
            N = T' * H * W, and ``second_per_grid_ts`` float32 [1] = temporal_patch_size / fps.
        """
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        frames = pad_to_temporal_patches(video_frames(video), self.temporal_patch_size)
        pixel_values, grid_thw = self._encode(frames, self.video_min_pixels, self.video_max_pixels, "video")
        second_per_grid_ts = torch.tensor([self.temporal_patch_size / fps], dtype=torch.float32)
        return pixel_values, grid_thw, second_per_grid_ts

    def _encode(
        self, frames: list[Image.Image], min_pixels: int, max_pixels: int, name: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        width, height = frames[0].size
        try:
            resized_height, resized_width = smart_resize(
                height, width, self.patch_size * self.merge_size, min_pixels, max_pixels
            )
        except ValueError as error:
            raise ImageLoadError(f"{name}: {error}") from error
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
