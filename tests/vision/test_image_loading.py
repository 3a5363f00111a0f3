"""Loading images from files: EXIF orientation applied, every kind of broken file refused with its name."""

import struct
import zlib

import numpy as np
import pytest
import torch
from support.image_reference import reference_image
from support.media import image_in_mode, photo
from PIL import Image

from qwenvl_data.errors import ImageLoadError
from qwenvl_data.image import Qwen2_5_VLImageTransform, load_image

EXIF_ORIENTATION = 0x0112


@pytest.mark.parametrize(
    "mode,suffix", [("RGB", "png"), ("RGBA", "png"), ("P", "gif"), ("L", "jpg"), ("LA", "png"), ("1", "png"),
                    ("CMYK", "jpg"), ("YCbCr", "jpg")]
)
def test_path_gives_the_same_pixels_as_the_reference_on_the_opened_file(tmp_path, mode, suffix):
    path = tmp_path / f"image.{suffix}"
    image_in_mode(mode, 211, 143, seed=4).save(path)
    with Image.open(path) as opened:  # no EXIF tag: the reference sees exactly what we load
        assert opened.mode == {"YCbCr": "RGB"}.get(mode, mode)  # PIL reads a YCbCr JPEG as RGB
        expected_values, expected_grid = reference_image(opened)
    out = Qwen2_5_VLImageTransform()({"image": str(path)})
    assert torch.equal(out["image_grid_thw"], expected_grid)
    assert torch.equal(out["pixel_values"], expected_values)


def test_bytes_and_pathlike_sources_load_the_same_image(tmp_path):
    path = tmp_path / "image.png"
    photo(90, 70, seed=1).save(path)
    from_path, from_bytes = load_image(path), load_image(path.read_bytes())
    assert np.array_equal(np.asarray(from_path), np.asarray(from_bytes))


def _save_jpeg_with_orientation(path, image: Image.Image, orientation: int) -> None:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    image.save(path, exif=exif, quality=95)


@pytest.mark.parametrize("orientation,turns", [(6, -1), (8, 1), (3, 2)])  # np.rot90 turns, counter-clockwise
def test_exif_orientation_is_applied_when_loading_a_file(tmp_path, orientation, turns):
    path = tmp_path / "rotated.jpg"
    _save_jpeg_with_orientation(path, photo(120, 60, seed=2), orientation)
    with Image.open(path) as stored:
        stored_pixels = np.asarray(stored.convert("RGB"))
    loaded = load_image(path)
    assert np.array_equal(np.asarray(loaded), np.rot90(stored_pixels, turns))
    assert EXIF_ORIENTATION not in loaded.getexif()


def test_transform_of_a_rotated_jpeg_sees_the_upright_image(tmp_path):
    path = tmp_path / "portrait.jpg"
    _save_jpeg_with_orientation(path, photo(560, 280, seed=3), 6)  # stored landscape, shown portrait
    out = Qwen2_5_VLImageTransform()({"image": path})
    assert out["image_grid_thw"].tolist() == [[1, 40, 20]]
    expected, _ = reference_image(load_image(path))
    assert torch.equal(out["pixel_values"], expected)


def test_pil_image_is_used_as_given_without_exif_rotation(tmp_path):
    path = tmp_path / "rotated.jpg"
    _save_jpeg_with_orientation(path, photo(120, 60), 6)
    with Image.open(path) as opened:
        assert load_image(opened) is opened
        assert load_image(opened).size == (120, 60)


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _broken_file(tmp_path, kind: str):
    path = tmp_path / f"{kind}.png"
    good = tmp_path / "good.png"
    photo(200, 150, seed=9).save(good)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "corrupt":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif kind == "corrupt_body":
        data = bytearray(good.read_bytes())
        data[200:400] = bytes(200)  # damages the compressed pixel data inside a valid PNG container
        path.write_bytes(bytes(data))
    elif kind == "bomb":
        path.write_bytes(_png_header_only(40000, 40000))  # 1.6 G pixels declared in 80 bytes
    return path


@pytest.mark.parametrize("kind", ["empty", "truncated", "corrupt", "corrupt_body", "bomb"])
def test_broken_file_raises_image_load_error_naming_it(tmp_path, kind):
    path = _broken_file(tmp_path, kind)
    with pytest.raises(ImageLoadError, match=str(path.name)):
        load_image(path)
    with pytest.raises(ImageLoadError, match=str(path.name)):
        Qwen2_5_VLImageTransform()({"image": str(path)})


def test_error_messages_say_what_is_wrong(tmp_path):
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(_broken_file(tmp_path, "empty"))
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image(_broken_file(tmp_path, "bomb"))
    with pytest.raises(ImageLoadError, match="truncated"):
        load_image(_broken_file(tmp_path, "truncated"))


def test_missing_file_raises_image_load_error_naming_it(tmp_path):
    missing = tmp_path / "nowhere" / "missing.jpg"
    with pytest.raises(ImageLoadError, match="missing.jpg.*does not exist"):
        load_image(missing)


def test_lazily_opened_truncated_pil_image_raises_image_load_error_naming_it(tmp_path):
    path = _broken_file(tmp_path, "truncated")
    with Image.open(path) as opened:  # opening reads only the header; the damage shows when decoding
        with pytest.raises(ImageLoadError, match="truncated.png"):
            Qwen2_5_VLImageTransform()({"image": opened})


def test_directory_instead_of_a_file_raises_image_load_error(tmp_path):
    with pytest.raises(ImageLoadError, match="is a directory"):
        load_image(tmp_path)


def test_broken_bytes_raise_image_load_error():
    with pytest.raises(ImageLoadError, match="<5 bytes>"):
        load_image(b"\x89PNG\r")


def test_image_load_error_is_a_value_error_with_a_skip_cause():
    assert issubclass(ImageLoadError, ValueError) and ImageLoadError.cause == "bad_image"


@pytest.mark.parametrize(
    "tensor",
    [
        torch.zeros(3, 8, 8, dtype=torch.float32),
        torch.zeros(2, 8, 8, dtype=torch.uint8),
        torch.zeros(8, 8, dtype=torch.uint8),
    ],
    ids=["float", "two-channels", "no-channel-dim"],
)
def test_tensor_that_is_not_uint8_chw_is_refused(tensor):
    with pytest.raises(ValueError, match=r"uint8 \[C, H, W\]"):
        Qwen2_5_VLImageTransform()({"image": tensor})


def test_unsupported_source_type_is_refused():
    with pytest.raises(ImageLoadError, match="int"):
        load_image(42)
