"""Per-item options of an image or a video (qwen-vl-utils' keys), and the one function that reads them off a dict.

A content part, or a sample handed to the image transform, may carry options beside its image or video:
images ``min_pixels``, ``max_pixels``, ``resized_height``, ``resized_width`` (qwen-vl-utils' ``fetch_image``);
videos the ``VideoOptions`` keys. An option is set when its value is not None (Arrow rows hold every key).
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

from qwenvl_data._constants import RESIZED_IMAGE_MAX_TOKENS, RESIZED_IMAGE_MIN_TOKENS
from qwenvl_data.vision._resize import smart_resize
from qwenvl_data.video import VIDEO_OPTION_KEYS


@dataclasses.dataclass(frozen=True)
class ImageOptions:
    """How large one image becomes, by qwen-vl-utils' rules; unset budgets take the transform's.

    Args:
        min_pixels (int | None): lower pixel budget of this image (default: the transform's ``min_pixels``).
        max_pixels (int | None): upper pixel budget of this image (default: the transform's ``max_pixels``).
        resized_height, resized_width (int | None): an explicit size, set together; it is fitted to whole
            ``factor``-pixel blocks (28; Qwen3-VL: 32) by ``smart_resize(resized_height, resized_width)`` within
            qwen-vl-utils' own image bounds (4..16384 merged tokens: 3136..12845056 pixels at 28), and the budgets
            are not used (qwen-vl-utils' ``fetch_image``).

    Raises:
        ValueError: a value that is not a positive int, one of ``resized_height``/``resized_width`` without the
            other, or ``min_pixels`` > ``max_pixels``.
    """

    min_pixels: int | None = None
    max_pixels: int | None = None
    resized_height: int | None = None
    resized_width: int | None = None

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"image option {field.name} must be a positive int, got {value!r}")
        if (self.resized_height is None) != (self.resized_width is None):
            raise ValueError("image options resized_height and resized_width must be given together")
        if self.min_pixels is not None and self.max_pixels is not None and self.min_pixels > self.max_pixels:
            raise ValueError(f"image option min_pixels {self.min_pixels} > max_pixels {self.max_pixels}")

    def size(self, height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
        """The (height, width) an image of ``height`` x ``width`` is resized to.

        Args:
            factor: patch size x merge size; min_pixels, max_pixels: the transform's budgets (the defaults).

        Raises:
            ValueError: the resulting budget is empty (``min_pixels`` > ``max_pixels``), or ``smart_resize``'s.
        """
        if self.resized_height is not None:
            return smart_resize(
                self.resized_height, self.resized_width, factor, RESIZED_IMAGE_MIN_TOKENS * factor**2,
                RESIZED_IMAGE_MAX_TOKENS * factor**2,
            )  # fmt: skip
        low = min_pixels if self.min_pixels is None else self.min_pixels
        high = max_pixels if self.max_pixels is None else self.max_pixels
        if low > high:
            raise ValueError(f"pixel budget min_pixels {low} > max_pixels {high} (the image's and the transform's)")
        return smart_resize(height, width, factor, low, high)


IMAGE_OPTION_KEYS = tuple(field.name for field in dataclasses.fields(ImageOptions))
MEDIA_OPTION_KEYS = {"image": IMAGE_OPTION_KEYS, "video": VIDEO_OPTION_KEYS}


def held_options(item: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The ``kind`` ("image" | "video") options ``item`` sets, i.e. whose value is not None."""
    return {key: item[key] for key in MEDIA_OPTION_KEYS[kind] if item.get(key) is not None}
