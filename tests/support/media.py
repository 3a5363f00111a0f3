"""Generated test media: photo-like PIL images in every mode and size, and video clips.

Real pixels (gradients, shapes, noise, text) so that resize and normalisation are exercised the way a
photo exercises them; deterministic by seed.
"""

import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw

# Modes the image transform takes exactly as the reference does (8 bits per sample); the 16-bit modes are scaled
# instead of clipped and F / wide I refused (see qwenvl_data.vision._image_io.to_rgb), so they are tested on their own.
EIGHT_BIT_MODES = ("RGB", "RGBA", "LA", "L", "P", "PA", "CMYK", "YCbCr", "1")


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """An RGB image with smooth gradients, hard-edged shapes, text and sensor-like noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    fx, fy = rng.uniform(0.5, 3.0, size=2)
    base = np.stack(
        [
            127 + 120 * np.sin(fx * 6.283 * x / max(width, 1) + rng.uniform(0, 6)),
            127 + 120 * np.cos(fy * 6.283 * y / max(height, 1) + rng.uniform(0, 6)),
            255 * (x + y) / max(width + height - 2, 1),
        ],
        axis=-1,
    )
    base += rng.normal(0, 12, size=base.shape)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 6))):
        x0, x1 = sorted(rng.integers(0, max(width, 2), size=2))
        y0, y1 = sorted(rng.integers(0, max(height, 2), size=2))
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.rectangle([x0, y0, x1, y1], fill=color)
        else:
            draw.ellipse([x0, y0, x1, y1], outline=color, width=2)
    draw.text((width // 8, height // 3), "Qwen2.5-VL 42", fill=(255, 255, 255))
    return img


def image_in_mode(mode: str, width: int, height: int, seed: int = 0) -> Image.Image:
    """``photo`` converted to ``mode`` (PIL's own conversion; 16/32-bit modes get real wide values)."""
    rgb = photo(width, height, seed)
    if mode in ("RGB",):
        return rgb
    if mode in ("RGBA", "LA", "PA"):
        alpha = Image.linear_gradient("L").resize((width, height))
        out = rgb.convert("RGBA")
        out.putalpha(alpha)
        if mode == "RGBA":
            return out
        if mode == "LA":
            return out.convert("LA")
        pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=200)
        pa = pal.convert("PA")
        pa.putalpha(alpha)
        return pa
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    if mode == "I;16":
        gray = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257
        return Image.frombytes("I;16", (width, height), gray.astype("<u2").tobytes())
    if mode == "I":
        gray = np.asarray(rgb.convert("L"), dtype=np.int32) * 1000 - 50000
        return Image.fromarray(gray)
    if mode == "F":
        gray = np.asarray(rgb.convert("L"), dtype=np.float32) / 255.0 * 300.0 - 20.0
        return Image.fromarray(gray)
    return rgb.convert(mode)


def palette_with_transparency(width: int, height: int, seed: int = 0) -> Image.Image:
    """A "P" image whose palette index 0 is transparent (``info["transparency"]``), as GIFs often are."""
    img = photo(width, height, seed).convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    img.info["transparency"] = 0
    return img


def video_frames(num_frames: int, width: int, height: int, seed: int = 0) -> list[Image.Image]:
    """RGB frames of a moving scene: each frame is a different photo-like image."""
    return [photo(width, height, seed + t) for t in range(num_frames)]


def png_16_bit(samples: np.ndarray, exif: bytes | None = None) -> bytes:
    """A 16-bit PNG (bit depth 16) of ``samples``: uint16 [H, W] (grey), [H, W, 2] (grey + alpha), [H, W, 3]
    (RGB) or [H, W, 4] (RGBA), rows filtered in turn with None, Sub and Up so that decoding must undo the
    filters; ``exif`` is an optional eXIf chunk. Written by hand because PIL cannot write 16-bit colour PNGs."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width = samples.shape[:2]
    channels = 1 if samples.ndim == 2 else samples.shape[2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = np.frombuffer(samples.astype(">u2").tobytes(), np.uint8).reshape(height, -1).astype(np.int32)
    step = 2 * channels  # bytes per pixel
    raw = b""
    for y, row in enumerate(rows):
        kind = y % 3
        if kind == 1:  # Sub: minus the byte one pixel to the left
            row = row - np.concatenate([np.zeros(step, np.int32), row[:-step]])
        elif kind == 2:  # Up: minus the byte above
            row = row - rows[y - 1]
        raw += bytes([kind]) + (row % 256).astype(np.uint8).tobytes()
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    extra = chunk(b"eXIf", exif) if exif is not None else b""
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + extra + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def tiff_16_bit(samples: np.ndarray, byte_order: str = "<", deflate: bool = False) -> bytes:
    """An uncompressed (or deflate-compressed) 16-bit RGB / RGBA TIFF of uint16 [H, W, 3 | 4] ``samples`` in
    ``byte_order`` ("<" little, ">" big endian), one strip. Written by hand: PIL cannot write 16-bit colour."""
    height, width, channels = samples.shape
    data = samples.astype(f"{byte_order}u2").tobytes()
    data = zlib.compress(data) if deflate else data
    short, long = 3, 4
    entries = [(256, long, 1, width), (257, long, 1, height), (258, short, channels, None),
               (259, short, 1, 8 if deflate else 1), (262, short, 1, 2), (273, long, 1, None),
               (277, short, 1, channels), (278, long, 1, height), (279, long, 1, len(data)), (284, short, 1, 1)]
    if channels == 4:
        entries.append((338, short, 1, 2))  # the fourth sample is unassociated alpha
    ifd_size = 2 + 12 * len(entries) + 4
    bits_offset = 8 + ifd_size
    data_offset = bits_offset + 2 * channels
    ifd = struct.pack(f"{byte_order}H", len(entries))
    for tag, kind, count, value in entries:
        value = {258: bits_offset, 273: data_offset}.get(tag, value)
        packed = struct.pack(f"{byte_order}H", value) + b"\0\0" if kind == short and tag != 258 else struct.pack(
            f"{byte_order}I", value)
        ifd += struct.pack(f"{byte_order}HHI", tag, kind, count) + packed
    ifd += struct.pack(f"{byte_order}I", 0)
    header = (b"II" if byte_order == "<" else b"MM") + struct.pack(f"{byte_order}HI", 42, 8)
    return header + ifd + struct.pack(f"{byte_order}{channels}H", *[16] * channels) + data


def index_colour(index: int) -> tuple[int, int, int]:
    """A flat colour that encodes a frame's index (up to 4095) and survives lossy video coding."""
    return (16 * (index % 16) + 8, 16 * (index // 16 % 16) + 8, 16 * (index // 256) + 8)


def colour_index(frame: Image.Image) -> int:
    """The index ``index_colour`` encoded, read back from a decoded frame's mean colour."""
    r, g, b = (round((float(c) - 8) / 16) for c in np.asarray(frame.convert("RGB"), np.float32).mean(axis=(0, 1)))
    return r + 16 * g + 256 * b


def write_video(
    path, num_frames: int, width: int, height: int, rate=30, *, times_ms=None, rotation=None, pictures=None
) -> str:
    """An H.264 clip (PyAV) whose frame i is flat ``index_colour(i)`` (or ``pictures[i]``).

    Args:
        rate: frame rate (int or Fraction, e.g. Fraction(30000, 1001)); ignored for the timing when
            ``times_ms`` (each frame's presentation time in milliseconds, a variable frame rate) is given.
        rotation: display rotation stored with the stream, counter-clockwise degrees.
    """
    import av  # a dependency of qwenvl_data

    path = str(path)
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": "12"}
        if times_ms is not None:
            from fractions import Fraction

            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i in range(num_frames):
            picture = pictures[i] if pictures is not None else Image.new("RGB", (width, height), index_colour(i))
            frame = av.VideoFrame.from_image(picture)
            if times_ms is not None:
                frame.pts, frame.time_base = times_ms[i], stream.time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path
