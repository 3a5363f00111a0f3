"""16-bit images are scaled to 8 bits as round(v / 257) (a departure from the reference, which clips them to
near-white): an 8-bit image stored as 16 bits gives exactly the reference's output for the 8-bit image. Modes whose
range is unknown are refused by name."""

import io

import numpy as np
import pytest
import torch
from support.image_reference import frame_planes, reference_image
from support.media import image_in_mode, photo, png_16_bit, tiff_16_bit
from PIL import Image

from qwenvl_data.errors import ImageLoadError
from qwenvl_data.image import Qwen2_5_VLImageTransform, load_image
from qwenvl_data.transform import Qwen2_5_VLTransform

SIZE = (213, 141)


def assert_equals_reference_on(source, expected_image):
    """Our output for ``source`` equals the reference processor's output for ``expected_image``."""
    expected_values, expected_grid = reference_image(expected_image)
    out = Qwen2_5_VLImageTransform()({"image": source})
    assert torch.equal(out["image_grid_thw"], expected_grid)
    assert torch.equal(out["pixel_values"], expected_values)


def grey_8_bit(seed: int = 0) -> Image.Image:
    return photo(*SIZE, seed=seed).convert("L")


def as_16_bit(image: Image.Image) -> np.ndarray:
    """uint16 samples v = 257 * u of an 8-bit image: the same picture, stored with 16 bits."""
    return np.asarray(image, dtype=np.uint16) * 257


def saved(image: Image.Image, path, **options) -> str:
    image.save(path, **options)
    return str(path)


@pytest.mark.parametrize("mode,file_format", [("I;16", "PNG"), ("I;16", "TIFF"), ("I;16B", "TIFF"), ("I", "TIFF")])
def test_16_bit_greyscale_file_of_an_8_bit_image_equals_the_reference_on_the_8_bit_image(tmp_path, mode, file_format):
    grey = grey_8_bit(seed=1)
    dtype = {"I;16": "<u2", "I;16B": ">u2", "I": "<i4"}[mode]
    stored = Image.frombytes(mode, grey.size, as_16_bit(grey).astype(dtype).tobytes())
    path = saved(stored, tmp_path / f"grey.{file_format.lower()}", format=file_format)
    with Image.open(path) as opened:
        assert opened.mode == mode  # what PIL 13 gives for these files
    assert_equals_reference_on(path, grey)


@pytest.mark.parametrize("mode", ["I;16", "I;16L", "I;16B", "I;16N", "I"])
def test_16_bit_greyscale_pil_image_of_an_8_bit_image_equals_the_reference_on_the_8_bit_image(mode):
    grey = grey_8_bit(seed=2)
    samples = as_16_bit(grey)
    if mode == "I":
        stored = Image.fromarray(samples.astype(np.int32))
    else:
        stored = Image.frombytes(mode, grey.size, samples.astype("=u2" if mode == "I;16N" else ">u2" if mode ==
                                                                 "I;16B" else "<u2").tobytes())
    assert stored.mode == mode
    assert_equals_reference_on(stored, grey)


COLOUR_FILES = {  # 16-bit colour files PIL 13 opens as 8-bit RGB / RGBA (keeping each sample's high byte)
    "png": lambda samples: png_16_bit(samples),
    "tiff-little-endian": lambda samples: tiff_16_bit(samples, "<"),
    "tiff-big-endian": lambda samples: tiff_16_bit(samples, ">"),
    "tiff-deflate": lambda samples: tiff_16_bit(samples, "<", deflate=True),
}
COLOUR_CASES = [(name, mode) for name in COLOUR_FILES for mode in ("RGB", "RGBA")] + [("png", "LA")]


@pytest.mark.parametrize("file_kind,mode_8_bit", COLOUR_CASES)
def test_16_bit_colour_file_of_an_8_bit_image_equals_the_reference_on_the_8_bit_image(tmp_path, file_kind,
                                                                                       mode_8_bit):
    image = image_in_mode(mode_8_bit, *SIZE, seed=3)
    path = tmp_path / f"colour16.{file_kind[:4]}"
    path.write_bytes(COLOUR_FILES[file_kind](as_16_bit(image)))
    with Image.open(path) as opened:  # grey + alpha opens as RGBA too
        assert opened.mode == {"LA": "RGBA"}.get(mode_8_bit, mode_8_bit)
    assert_equals_reference_on(str(path), image)


@pytest.mark.parametrize("file_kind,mode_8_bit", COLOUR_CASES)
def test_16_bit_colour_samples_are_scaled_by_257_not_truncated_to_their_high_byte(file_kind, mode_8_bit):
    channels = {"RGB": 3, "RGBA": 4, "LA": 2}[mode_8_bit]
    samples = np.random.default_rng(channels).integers(0, 65536, (37, 29, channels), dtype=np.uint16)
    expected = np.floor(samples / 257 + 0.5).astype(np.uint8)
    assert not np.array_equal(expected, samples >> 8)  # these samples tell the two rules apart
    if mode_8_bit == "LA":  # read as RGBA: grey in R, G and B
        expected = expected[..., [0, 0, 0, 1]]
    loaded = load_image(COLOUR_FILES[file_kind](samples))
    assert np.array_equal(np.asarray(loaded), expected)


def test_16_bit_colour_png_is_turned_upright_by_its_exif_orientation():
    samples = np.random.default_rng(5).integers(0, 65536, (30, 20, 3), dtype=np.uint16)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    loaded = load_image(png_16_bit(samples, exif=exif.tobytes()))
    assert np.array_equal(np.asarray(loaded), np.rot90(np.floor(samples / 257 + 0.5).astype(np.uint8), -1))


def test_16_bit_values_are_scaled_by_257_rounded_to_nearest():
    # Every 16-bit value once: the expected 8-bit value is computed here in floating point.
    samples = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    expected = np.floor(samples / 257 + 0.5).astype(np.uint8)  # no ties: 257 is odd
    assert np.array_equal(expected[0, :3], [0, 0, 0]) and expected[-1, -1] == 255
    stored = Image.frombytes("I;16", (256, 256), samples.astype("<u2").tobytes())
    assert_equals_reference_on(stored, Image.fromarray(expected, "L"))


def test_16_bit_greyscale_is_not_clipped_to_white_as_the_reference_does():
    grey = grey_8_bit(seed=4)
    stored = Image.frombytes("I;16", grey.size, as_16_bit(grey).astype("<u2").tobytes())
    ours = Qwen2_5_VLImageTransform()({"image": stored})["pixel_values"]
    clipped, _ = reference_image(stored)
    white, _ = reference_image(Image.new("L", grey.size, 255))
    assert (clipped == white).float().mean() > 0.95  # the reference's picture: nearly all white
    assert not torch.equal(ours, clipped)


def test_transparent_value_of_a_16_bit_png_is_composited_like_the_8_bit_one(tmp_path):
    grey = grey_8_bit(seed=5)
    value = int(np.asarray(grey)[10, 10])
    eight = saved(grey, tmp_path / "grey8.png", transparency=value)
    stored = Image.frombytes("I;16", grey.size, as_16_bit(grey).astype("<u2").tobytes())
    sixteen = saved(stored, tmp_path / "grey16.png", transparency=257 * value)
    with Image.open(eight) as opened_8, Image.open(sixteen) as opened_16:
        assert opened_16.info["transparency"] == 257 * value
        assert_equals_reference_on(sixteen, opened_8)


def test_16_bit_frames_of_a_video_equal_the_8_bit_frames():
    frames = [grey_8_bit(seed=s) for s in (6, 7)]
    stored = [Image.frombytes("I;16", f.size, as_16_bit(f).astype("<u2").tobytes()) for f in frames]
    transform = Qwen2_5_VLImageTransform()
    ours = transform({"video": stored})
    expected = transform({"video": frames})
    assert torch.equal(ours["pixel_values_videos"], expected["pixel_values_videos"])
    first, _ = reference_image(frames[0], 128 * 28 * 28, 768 * 28 * 28)
    ours_planes = frame_planes(ours["pixel_values_videos"], ours["video_grid_thw"])
    assert torch.equal(ours_planes[0, 0], frame_planes(first, ours["video_grid_thw"])[0, 0])


@pytest.mark.parametrize(
    "image,message",
    [
        (image_in_mode("F", 40, 30), r"mode F \(32-bit float samples\) has no known value range; scale it"),
        (Image.fromarray(np.full((30, 40), -5, dtype=np.int32)), r"mode I holds values -5..-5, beyond 16 bits"),
        (Image.fromarray(np.full((30, 40), 70000, dtype=np.int32)), r"mode I holds values 70000..70000"),
    ],
    ids=["F", "I-negative", "I-above-65535"],
)
def test_modes_of_unknown_range_are_refused_naming_the_mode_and_the_fix(image, message):
    with pytest.raises(ImageLoadError, match=message):
        Qwen2_5_VLImageTransform()({"image": image})


def test_an_unknown_range_file_is_refused_naming_the_sample_and_the_file(vocab_files, tmp_path):
    path = saved(image_in_mode("F", 40, 30), tmp_path / "depth.tiff")
    transform = Qwen2_5_VLTransform(*vocab_files)
    messages = [{"role": "user", "content": [{"type": "image", "image": path}]}, {"role": "assistant", "content": "x"}]
    with pytest.raises(ImageLoadError, match=r"sample \(d7\): image '.*depth.tiff': image mode F"):
        transform({"id": "d7", "messages": messages})


@pytest.mark.parametrize("mode", ["1", "LA", "PA", "YCbCr", "RGBX", "RGBa", "HSV", "LAB"])
def test_other_8_bit_modes_equal_the_reference(mode):
    image = image_in_mode(mode, *SIZE, seed=8)
    assert image.mode == mode
    assert_equals_reference_on(image, image)


def test_cmyk_jpeg_file_equals_the_reference_on_the_opened_file(tmp_path):
    path = saved(photo(*SIZE, seed=9).convert("CMYK"), tmp_path / "print.jpg", quality=90)
    with Image.open(path) as opened:
        assert opened.mode == "CMYK"
        assert_equals_reference_on(path, opened)


def test_a_mode_pil_cannot_convert_is_an_image_load_error():
    premultiplied = photo(20, 20).convert("RGBA").convert("La")
    with pytest.raises(ImageLoadError, match="mode La cannot be converted to RGB"):
        Qwen2_5_VLImageTransform()({"image": premultiplied})


def test_loading_keeps_the_16_bit_samples_until_the_conversion(tmp_path):
    samples = np.arange(0, 65536, 257 * 3, dtype=np.uint16).reshape(1, -1).repeat(4, axis=0)
    buffer = io.BytesIO()
    Image.frombytes("I;16", samples.shape[::-1], samples.astype("<u2").tobytes()).save(buffer, "PNG")
    loaded = load_image(buffer.getvalue())
    assert loaded.mode == "I;16" and np.array_equal(np.asarray(loaded), samples)
