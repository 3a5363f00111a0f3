"""Turning what a sample holds (any media reference, a PIL image, a uint8 tensor) into an RGB PIL image.

References (paths, ``file://`` URIs, data URLs, bytes, HF image dicts) are resolved by ``resolve_media``, the one
resolver every reader shares. Files are decoded fully here, so a truncated or corrupt file fails at load time with
the file's name rather than later inside the resize. Colour conversion follows the released checkpoints' processor
(transparency composited onto white, every other mode through PIL's own conversion to RGB) with two documented
departures: files are turned upright by their EXIF orientation (``load_image``), and 16-bit samples are scaled to
8 bits instead of clipped or truncated (``load_image``, ``to_rgb``).
"""

import io
import os
import warnings
from typing import Any

import torch
from PIL import Image, ImageOps

from qwenvl_data.vision._bit_depth import UINT16_MODES, decode_16_bit_colour, is_16_bit_colour, scale_16_bit_grey
from qwenvl_data.vision._media_refs import open_regular_file, resolve_media
from qwenvl_data.errors import ImageLoadError

ImageSource = Image.Image | str | os.PathLike | bytes | dict


def load_image(source: Any) -> Image.Image:
    """Open an image and decode its pixels, applying its EXIF orientation.

    ``source`` is resolved by ``qwenvl_data.vision._media_refs.resolve_media`` (no ``image_dir`` confinement: the
    datasets confine a record's paths before they get here). A file or bytes are opened with PIL, fully decoded,
    and turned upright by their EXIF ``Orientation`` tag (as photo viewers show them; the transformers processor,
    which takes already opened images, does not do this). A PIL image is returned as it is (decoded, if it was
    opened lazily). Anything but a regular file is refused before it is opened (a FIFO would block). Files with
    more than PIL's ``Image.MAX_IMAGE_PIXELS`` pixels (89.5 M by default) are refused as decompression bombs.
    16-bit colour PNG and TIFF files (48/64 bits per pixel, and 16-bit grey + alpha PNG), which PIL decodes to
    8-bit RGB/RGBA by keeping each sample's high byte, come back as RGB/RGBA scaled by round(v / 257) instead
    (a departure from the reference, see ``qwenvl_data.vision._bit_depth``); 16-bit greyscale keeps its mode
    (``I;16``...) until ``to_rgb`` scales it.

    Args:
        source: a PIL image, a path, a ``file://`` URI, a ``data:`` URL, encoded bytes, or an HF
            ``{"bytes", "path"}`` / OpenAI ``{"url"}`` dict.

    Returns:
        PIL.Image.Image: the decoded image in its own mode (not yet RGB).

    Raises:
        ImageLoadError: a remote URL, an unsupported reference, or a file that is missing, not a regular file,
            empty, not an image, truncated, corrupt or a decompression bomb; the message names the reference.

    Example:
        >>> load_image(Image.new("RGB", (4, 3))).size
        (4, 3)
    """
    resolved = resolve_media(source)
    if isinstance(resolved, torch.Tensor):
        raise ImageLoadError("an image tensor is not a file to load; pass it to the image transform")
    if isinstance(resolved, Image.Image):
        try:
            resolved.load()  # a lazily opened file decodes here, so its faults surface as ImageLoadError too
        except (OSError, SyntaxError, ValueError) as error:
            name = getattr(resolved, "filename", "") or "(PIL image)"
            raise ImageLoadError(f"image {name} is corrupt or truncated: {error}") from error
        return resolved
    if isinstance(resolved, bytes):
        name, stream = f"<{len(resolved)} bytes>", io.BytesIO(resolved)
    else:
        name, stream = resolved, open_regular_file(resolved)
    with stream:
        return _decode(stream, name)


def _decode(stream: io.BufferedIOBase, name: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that; no training image needs that many pixels.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream) as opened:
                tiles = list(opened.tile)  # how PIL will decode it; load() empties the list
                opened.load()
                upright = ImageOps.exif_transpose(opened)
            if is_16_bit_colour(tiles):  # PIL kept only each sample's high byte: read the low bytes too
                return decode_16_bit_colour(stream, tiles, upright)
            return upright
    except Image.DecompressionBombError as error:
        raise ImageLoadError(f"image {name} is a decompression bomb: {error}") from error
    except Image.UnidentifiedImageError as error:
        reason = "is empty" if _is_empty(stream) else "is not an image PIL can read"
        raise ImageLoadError(f"image {name} {reason}") from error
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as error:
        raise ImageLoadError(f"image {name} is corrupt or truncated: {error}") from error


def _is_empty(stream: io.BufferedIOBase) -> bool:
    stream.seek(0, io.SEEK_END)
    return stream.tell() == 0


def to_rgb(image: Image.Image | torch.Tensor) -> Image.Image:
    """An RGB copy of ``image``, converted the way the released checkpoints' processor converts.

    Every 8-bit mode (RGB, RGBA, L, LA, P, PA, CMYK, YCbCr, 1, ...) goes exactly the reference's way: transparency
    (an alpha band or a palette's transparent index) composited onto white, then PIL's conversion to RGB.

    Departure from the reference, on purpose (see ``qwenvl_data.vision._bit_depth``): PIL converts 16-bit samples to 8
    bits by clipping at 255, so a 16-bit greyscale photo becomes nearly white (the reference does the same). Here
    one 16-bit integer sample per pixel (modes ``I;16``, ``I;16L``, ``I;16B``, ``I;16N``, and ``I`` when every
    value is in 0..65535; 16-bit greyscale PNG and TIFF files open so) is first scaled to 8 bits as
    round(v / 257), so an 8-bit image stored as 16 bits (v = 257 * u) gives exactly the 8-bit image's result.
    (16-bit colour PNG and TIFF files are scaled the same way when ``load_image`` decodes them.) Modes whose range
    cannot be known, ``F`` (float) and ``I`` with negative values or values above 65535, are refused.

    Args:
        image (PIL.Image.Image | torch.Tensor): a PIL image, or uint8 [C, H, W] with C = 1 (grey), 3 (RGB) or
            4 (RGBA).

    Returns:
        PIL.Image.Image: mode "RGB" (``image`` itself when it already is RGB).

    Raises:
        ImageLoadError: a mode ``F`` image, or a mode ``I`` image with values outside 0..65535 (the message
            names the mode, the value range and how to convert), or a mode PIL cannot convert to RGB.
    """
    if isinstance(image, torch.Tensor):
        return _tensor_to_rgb(image)
    if image.mode in UINT16_MODES or image.mode in ("I", "F"):
        image = scale_16_bit_grey(image)
    if image.mode == "RGB":
        return image
    try:
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            on_white = Image.new("RGBA", image.size, (255, 255, 255, 255))
            return Image.alpha_composite(on_white, image.convert("RGBA")).convert("RGB")
        return image.convert("RGB")
    except ValueError as error:  # a mode PIL has no conversion for, e.g. premultiplied "La"
        raise ImageLoadError(f"image mode {image.mode} cannot be converted to RGB: {error}") from error


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
