"""Target size of an image for the vision encoder, and the resize to it.

The size rule must give the same grid as the released checkpoints' processor for every input size, so it is
computed with the same floating-point steps (Python ``round`` ties to even, ``sqrt`` of the pixel ratio).
"""

import math

from PIL import Image

from qwenvl_data._constants import IMAGE_MAX_PIXELS, IMAGE_MIN_PIXELS, MAX_ASPECT_RATIO, MERGE_SIZE, PATCH_SIZE


def smart_resize(
    height: int,
    width: int,
    factor: int = PATCH_SIZE * MERGE_SIZE,
    min_pixels: int = IMAGE_MIN_PIXELS,
    max_pixels: int = IMAGE_MAX_PIXELS,
) -> tuple[int, int]:
    """The (height, width) an image is resized to: multiples of ``factor``, about the same aspect ratio,
    and (unless one side is already at ``factor``) between ``min_pixels`` and ``max_pixels`` pixels.

    Args:
        height (int): input height in pixels, >= 1.
        width (int): input width in pixels, >= 1.
        factor (int): both output sides are multiples of this (patch size x merge size = 28).
        min_pixels (int): smallest pixel count to scale up to.
        max_pixels (int): largest pixel count to scale down to.

    Returns:
        tuple[int, int]: (resized_height, resized_width).

    Raises:
        ValueError: an empty image, or one more elongated than ``MAX_ASPECT_RATIO`` (200:1), which the model
            cannot represent with whole patches.

    Example:
        >>> smart_resize(480, 640)
        (476, 644)
    """
    if height < 1 or width < 1:
        raise ValueError(f"image of {width}x{height} pixels is empty")
    _check_aspect_ratio(height, width, "image of {width}x{height} pixels has")
    return _scaled_to_budget(height, width, factor, min_pixels, max_pixels)


def _check_aspect_ratio(height: int, width: int, subject: str) -> None:
    """ValueError when more elongated than ``MAX_ASPECT_RATIO`` (``subject`` names what, with its size)."""
    aspect_ratio = max(height, width) / min(height, width)
    if aspect_ratio > MAX_ASPECT_RATIO:
        raise ValueError(
            f"{subject.format(width=width, height=height)} aspect ratio {aspect_ratio:.1f}, "
            f"more than the {MAX_ASPECT_RATIO} the model supports"
        )


def _scaled_to_budget(
    height: int, width: int, factor: int, min_pixels: float, max_pixels: float, frames: int = 1, counted: int = 1
) -> tuple[int, int]:
    """Both sides rounded to multiples of ``factor``; when ``counted`` frames of that size fall outside
    [``min_pixels``, ``max_pixels``], both scaled by ``sqrt`` of the budget over ``frames`` frames of the input size
    (down: floored, at least ``factor``; up: ceiled). The reference's float steps, in its order."""
    resized_height = round(height / factor) * factor
    resized_width = round(width / factor) * factor
    if counted * resized_height * resized_width > max_pixels:
        shrink = math.sqrt(frames * height * width / max_pixels)
        resized_height = max(factor, math.floor(height / shrink / factor) * factor)
        resized_width = max(factor, math.floor(width / shrink / factor) * factor)
    elif counted * resized_height * resized_width < min_pixels:
        grow = math.sqrt(min_pixels / (frames * height * width))
        resized_height = math.ceil(height * grow / factor) * factor
        resized_width = math.ceil(width * grow / factor) * factor
    return resized_height, resized_width


def resize_rgb(image: Image.Image, height: int, width: int) -> Image.Image:
    """``image`` (mode RGB) resized with PIL's bicubic filter, the filter the released checkpoints saw."""
    if image.size == (width, height):
        return image  # PIL would return an identical copy; the pixels are only read afterwards
    return image.resize((width, height), Image.Resampling.BICUBIC)


def clip_smart_resize(
    num_frames: int, height: int, width: int, temporal_factor: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """The (height, width) every frame of a clip is resized to when the pixel budget bounds the whole clip
    (transformers 5.24's Qwen3-VL video ``smart_resize``, the same floating-point steps).

    Frames thinner than ``factor`` are first scaled up (truncating) until their short side is ``factor``; the clip's
    pixels are counted as ``round(num_frames / temporal_factor) * temporal_factor`` frames (Python ``round``)
    of the rounded size, and scaled into [``min_pixels``, ``max_pixels``] by ``sqrt`` of the ratio over
    ``num_frames`` frames of the original size.

    Raises:
        ValueError: fewer than ``temporal_factor`` frames, or an aspect ratio over 200 (as the reference).
    """
    if num_frames < temporal_factor:
        raise ValueError(f"a clip of {num_frames} frame(s): this video rule needs at least {temporal_factor}")
    if height < 1 or width < 1:
        raise ValueError(f"frames of {width}x{height} pixels are empty")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    _check_aspect_ratio(height, width, "frames of {width}x{height} pixels have")
    counted = round(num_frames / temporal_factor) * temporal_factor
    return _scaled_to_budget(height, width, factor, min_pixels, max_pixels, frames=num_frames, counted=counted)
