"""16-bit images to 8 bits as round(v / 257), where PIL (and so the reference processor) clips or truncates.

The released checkpoints' processor converts with PIL, which clips 16-bit greyscale (modes ``I;16*``, ``I``) at
255, so a 16-bit greyscale photo trains as a nearly white picture; and PIL's PNG and TIFF decoders read 16-bit
colour samples as their high byte, floor(v / 256). We scale every 16-bit sample as round(v / 257) instead, the map
that sends 0..65535 onto 0..255 with 257 * u -> u, so an 8-bit image stored as 16 bits gives exactly the 8-bit
image's result. There are no ties to break: v / 257 never ends in .5 since 257 is odd.
"""

import io
import sys

import numpy as np
from PIL import Image, ImageFile, ImageOps

from qwenvl_data.errors import ImageLoadError

# PIL's modes of one 16-bit unsigned integer sample per pixel (byte orders and native order).
UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")

# PIL rawmodes of 16-bit colour files (PNG, TIFF) that it decodes into 8-bit RGB/RGBA keeping each sample's high
# byte, each mapped to the rawmode of the same bytes that keeps the low byte instead (the other byte order).
_NATIVE_ORDER = "L" if sys.byteorder == "little" else "B"
_LOW_BYTE_RAWMODES = {
    f"{layout};16{order}": f"{layout};16{low}"
    for layout in ("RGB", "RGBX", "RGBA")
    for order, low in (("B", "L"), ("L", "B"), ("N", "B" if _NATIVE_ORDER == "L" else "L"))
}
# A 16-bit grey + alpha PNG (PIL: rawmode LA;16B into RGBA) has no low-byte rawmode; its 4 bytes per pixel
# (grey high, grey low, alpha high, alpha low) are read whole as 8-bit RGBA instead.
_GREY_ALPHA_RAWMODE = "LA;16B"


def scale_16_bit_grey(image: Image.Image) -> Image.Image:
    """A mode ``I;16*`` or ``I`` image as mode "L" (or "LA" when it has a transparent value), each sample v as
    round(v / 257); ``I`` is taken as 16-bit when every value is in 0..65535.

    Raises:
        ImageLoadError: mode ``F`` (floats of no known range), or mode ``I`` with values outside 0..65535; the
            message names the mode, the values and how to convert.
    """
    if image.mode == "F":
        raise ImageLoadError(
            "image mode F (32-bit float samples) has no known value range; scale it to 0..255 and convert it to "
            "mode L or RGB (e.g. Image.fromarray(np.clip(a * 255, 0, 255).astype(np.uint8))) before passing it"
        )
    samples = np.asarray(image).astype(np.int64)
    low, high = (int(samples.min()), int(samples.max())) if samples.size else (0, 0)
    if image.mode == "I" and (low < 0 or high > 65535):
        raise ImageLoadError(
            f"image mode I holds values {low}..{high}, beyond 16 bits, so its range is unknown; scale it to "
            f"0..255 (mode L) or 0..65535 (mode I;16) before passing it"
        )
    grey = Image.fromarray(_to_8_bit(samples), "L")
    transparent = image.info.get("transparency")  # a 16-bit PNG's tRNS: one sample value that is see-through
    if isinstance(transparent, int):
        grey.putalpha(Image.fromarray(np.where(samples == transparent, 0, 255).astype(np.uint8), "L"))
    return grey


def is_16_bit_colour(tiles: list[ImageFile._Tile]) -> bool:
    """Whether an opened file's ``tile`` list (taken before ``load``) decodes 16-bit colour samples."""
    rawmodes = {_rawmode(tile) for tile in tiles}
    return bool(rawmodes) and rawmodes <= {*_LOW_BYTE_RAWMODES, _GREY_ALPHA_RAWMODE}


def decode_16_bit_colour(stream: io.IOBase, tiles: list[ImageFile._Tile], high: Image.Image) -> Image.Image:
    """The 16-bit colour file in ``stream`` as 8-bit RGB/RGBA scaled by round(v / 257), upright by its EXIF tag.

    Args:
        stream: the seekable file or buffer PIL opened.
        tiles: the opened file's ``tile`` list, taken before it was loaded (``is_16_bit_colour`` holds).
        high: PIL's own decode of the file (the high bytes), already turned upright.

    Returns:
        PIL.Image.Image: mode of ``high`` (RGB or RGBA).
    """
    stream.seek(0)
    with Image.open(stream) as again:
        again.tile = [tile._replace(args=_with_rawmode(tile.args, _low_byte_rawmode(tile))) for tile in tiles]
        again.load()
        low = np.asarray(ImageOps.exif_transpose(again), dtype=np.int64)
    if _rawmode(tiles[0]) == _GREY_ALPHA_RAWMODE:
        grey, alpha = low[..., 0] * 256 + low[..., 1], low[..., 2] * 256 + low[..., 3]
        samples = np.stack([grey, grey, grey, alpha], axis=-1)
    else:
        samples = np.asarray(high, dtype=np.int64) * 256 + low
    return Image.fromarray(_to_8_bit(samples), high.mode)


def _to_8_bit(samples: np.ndarray) -> np.ndarray:
    """uint8 round(v / 257) of integer samples in 0..65535, in exact integer arithmetic."""
    return ((2 * samples + 257) // 514).astype(np.uint8)


def _rawmode(tile: ImageFile._Tile) -> str | None:
    args = tile.args
    rawmode = args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args else None)
    return rawmode if isinstance(rawmode, str) else None


def _low_byte_rawmode(tile: ImageFile._Tile) -> str:
    rawmode = _rawmode(tile)
    return "RGBA" if rawmode == _GREY_ALPHA_RAWMODE else _LOW_BYTE_RAWMODES[rawmode]


def _with_rawmode(args: str | tuple, rawmode: str) -> str | tuple:
    return rawmode if isinstance(args, str) else (rawmode, *args[1:])
