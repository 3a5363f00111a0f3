"""Turning what a sample holds (a path, bytes, a PIL image, a uint8 tensor) into an RGB PIL image.

Files are decoded fully here, so a truncated or corrupt file fails at load time with the file's name rather than
later inside the resize. Colour conversion follows the released checkpoints' processor: transparency is
composited onto white, every other mode goes through PIL's own conversion to RGB.
"""

import io
import os
import warnings

import torch
from PIL import Image, ImageOps

from qwenvl_data.errors import ImageLoadError

ImageSource = Image.Image | str | os.PathLike | bytes


def load_image(source: ImageSource) -> Image.Image:
    """Open an image and decode its pixels, applying its EXIF orientation.

    A file or bytes are opened with PIL, fully decoded, and turned upright by their EXIF ``Orientation`` tag
    (as photo viewers show them; the transformers processor, which takes already opened images, does not do
    this). A PIL image is returned as it is (decoded, if it was opened lazily). Files with more than PIL's
    ``Image.MAX_IMAGE_PIXELS`` pixels (89.5 M by default) are refused as decompression bombs.

    Args:
        source (PIL.Image.Image | str | os.PathLike | bytes): the image, its path, or its encoded bytes.

    Returns:
        PIL.Image.Image: the decoded image in its own mode (not yet RGB).

    Raises:
        ImageLoadError: the file is missing, empty, not an image, truncated, corrupt or a decompression bomb;
            the message names the file.

    Example:
        >>> load_image(Image.new("RGB", (4, 3))).size
        (4, 3)
    """
    if isinstance(source, Image.Image):
        try:
            source.load()  # a lazily opened file decodes here, so its faults surface as ImageLoadError too
        except (OSError, SyntaxError, ValueError) as error:
            name = getattr(source, "filename", "") or "(PIL image)"
            raise ImageLoadError(f"image {name} is corrupt or truncated: {error}") from error
        return source
    if isinstance(source, bytes):
        name, stream = f"<{len(source)} bytes>", io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        name, stream = os.fspath(source), os.fspath(source)
    else:
        raise TypeError(f"an image must be a PIL image, a path or bytes, got {type(source).__name__}")
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that; no training image needs that many pixels.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream) as opened:
                opened.load()
                return ImageOps.exif_transpose(opened)
    except FileNotFoundError as error:
        raise ImageLoadError(f"image file {name} does not exist") from error
    except (IsADirectoryError, PermissionError) as error:
        raise ImageLoadError(f"image file {name} cannot be read: {error.strerror}") from error
    except Image.DecompressionBombError as error:
        raise ImageLoadError(f"image {name} is a decompression bomb: {error}") from error
    except Image.UnidentifiedImageError as error:
        reason = "is empty" if _is_empty(stream) else "is not an image PIL can read"
        raise ImageLoadError(f"image {name} {reason}") from error
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as error:
        raise ImageLoadError(f"image {name} is corrupt or truncated: {error}") from error


def _is_empty(stream: str | io.BytesIO) -> bool:
    if isinstance(stream, io.BytesIO):
        return not stream.getbuffer().nbytes
    return os.path.getsize(stream) == 0


def to_rgb(image: Image.Image | torch.Tensor) -> Image.Image:
    """An RGB copy of ``image``, converted the way the released checkpoints' processor converts.

    Args:
        image (PIL.Image.Image | torch.Tensor): a PIL image in any mode, or uint8 [C, H, W] with C = 1 (grey),
            3 (RGB) or 4 (RGBA).

    Returns:
        PIL.Image.Image: mode "RGB" (``image`` itself when it already is RGB).
    """
    if isinstance(image, torch.Tensor):
        return _tensor_to_rgb(image)
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        on_white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(on_white, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def _tensor_to_rgb(image: torch.Tensor) -> Image.Image:
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] not in (1, 3, 4):
        raise ValueError(
            f"an image tensor must be uint8 [C, H, W] with C in (1, 3, 4), "
            f"got {str(image.dtype).removeprefix('torch.')} {list(image.shape)}"
        )
    channels = image.shape[0]
    if channels == 1:
        image = image.expand(3, -1, -1)
    elif channels == 4:
        image = _composite_on_white(image)
    return Image.fromarray(image.permute(1, 2, 0).contiguous().numpy(), "RGB")


def _composite_on_white(rgba: torch.Tensor) -> torch.Tensor:
    """uint8 [3, H, W]: ``rgba`` over a white background, rounded to nearest.

    Exact integers: the blend is 255 - alpha * (255 - colour) / 255, whose fractional part can never be 1/2
    (255 is odd), so rounding it has no ties and matches any correctly rounded float computation.
    """
    colour, alpha = rgba[:3].to(torch.int32), rgba[3:].to(torch.int32)
    scaled = 255 * 255 - alpha * (255 - colour)  # 255 x the blended value
    return torch.div(2 * scaled + 255, 2 * 255, rounding_mode="floor").to(torch.uint8)
