"""The image transform equals transformers' PIL-backend Qwen2-VL processor bit for bit."""

import functools
import math

import numpy as np
import pytest
import torch
from support.image_reference import reference_image
from support.media import EIGHT_BIT_MODES, image_in_mode, palette_with_transparency, photo
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as reference_smart_resize

from qwenvl_data.errors import ImageLoadError
from qwenvl_data.image import Qwen2_5_VLImageTransform, smart_resize

DEFAULT = (3136, 1003520)
RELEASED = (3136, 12845056)  # preprocessor_config.json of the released checkpoints
SMALL = (784, 28 * 28 * 16)
TINY_MAX = (100, 500)  # below one merge block: every image becomes one 28x28 block


def assert_same_as_reference(image, budget=DEFAULT, **kwargs):
    expected_values, expected_grid = reference_image(image, *budget)
    out = Qwen2_5_VLImageTransform(min_pixels=budget[0], max_pixels=budget[1], **kwargs)({"image": image})
    assert out["image_grid_thw"].dtype == torch.int64
    assert torch.equal(out["image_grid_thw"], expected_grid)
    assert out["pixel_values"].dtype == torch.float32
    assert out["pixel_values"].shape == (math.prod(expected_grid[0].tolist()), 1176)
    assert torch.equal(out["pixel_values"], expected_values), "pixel_values differ from the reference"


@pytest.mark.parametrize("mode", EIGHT_BIT_MODES)
@pytest.mark.parametrize("size", [(37, 51), (640, 480), (9, 300), (1000, 27)])
def test_every_mode_matches_reference(mode, size):
    assert_same_as_reference(image_in_mode(mode, *size, seed=len(mode)))


@functools.cache
def _checkpoint_image_transform(model_dir) -> Qwen2_5_VLImageTransform:
    from qwenvl_data.training import checkpoint_transform

    return checkpoint_transform(model_dir).image_transform


# (1400, 900): above the default budget (1003520 pixels), within the released one: only a budget read from the
# checkpoint keeps its size.
@pytest.mark.parametrize("size", [(37, 51), (1400, 900), (9, 300), (1000, 27), (1, 1), (4200, 21)])
def test_each_familys_released_preprocessor_config_gives_transformers_pixels(family_checkpoint, size):
    """The image transform a family's checkpoint directory builds against transformers' PIL processor reading the
    same preprocessor_config.json, on photos of odd sizes."""
    image_transform = _checkpoint_image_transform(family_checkpoint)
    reference = Qwen2VLImageProcessorPil.from_pretrained(family_checkpoint)
    image = photo(*size, seed=sum(size))
    ours, theirs = image_transform({"image": image}), reference(images=image, return_tensors="pt")
    assert torch.equal(ours["image_grid_thw"], theirs["image_grid_thw"])
    assert torch.equal(ours["pixel_values"], theirs["pixel_values"])


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "CMYK", "LA"])
@pytest.mark.parametrize("budget", [RELEASED, SMALL, TINY_MAX], ids=["released", "small", "tiny"])
def test_pixel_budgets_match_reference(mode, budget):
    assert_same_as_reference(image_in_mode(mode, 1283, 717, seed=3), budget)


def test_palette_with_transparent_index_matches_reference():
    image = palette_with_transparency(301, 199)
    assert image.info["transparency"] == 0
    assert_same_as_reference(image)


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (5, 4), (13, 29), (28, 28), (55, 57), (101, 1)])
def test_tiny_images_match_reference(size):
    assert_same_as_reference(photo(*size, seed=sum(size)))


@pytest.mark.parametrize(
    "size,budget",
    [((4032, 3024), RELEASED), ((4100, 2900), DEFAULT), ((640, 4300), SMALL)],
    ids=["12mp-released", "4100-default", "4300-tall-small"],
)
def test_large_images_match_reference(size, budget):
    assert_same_as_reference(photo(*size, seed=7), budget)


@pytest.mark.parametrize("size", [(2000, 10), (10, 2000), (4200, 21), (6, 1200)])
def test_aspect_ratio_at_the_limit_matches_reference(size):
    assert_same_as_reference(photo(*size, seed=1))


@pytest.mark.parametrize("size", [(2010, 10), (10, 2010), (4000, 3)])
def test_aspect_ratio_beyond_the_limit_is_refused_like_the_reference(size):
    image = photo(*size, seed=1)
    with pytest.raises(ValueError, match="aspect ratio"):
        reference_image(image)
    with pytest.raises(ImageLoadError, match=f"{size[0]}x{size[1]}.*aspect ratio"):
        Qwen2_5_VLImageTransform()({"image": image})


def test_every_uint8_value_of_every_channel_is_normalized_exactly():
    # 224x224 is already a valid size, so the resize keeps the pixels and each value reaches the arithmetic.
    values = np.arange(224 * 224, dtype=np.int64).reshape(224, 224)
    pixels = np.stack([values % 256, (values * 7 + 3) % 256, 255 - values % 256], axis=-1).astype(np.uint8)
    assert all(len(np.unique(pixels[..., c])) == 256 for c in range(3))
    assert_same_as_reference(Image.fromarray(pixels, "RGB"))


def test_custom_mean_and_std_match_reference():
    image = photo(300, 200, seed=5)
    mean, std = (0.5, 0.25, 0.125), (0.3, 0.2, 0.1)
    reference = Qwen2VLImageProcessorPil(image_mean=mean, image_std=std)(images=image, return_tensors="pt")
    ours = Qwen2_5_VLImageTransform(image_mean=mean, image_std=std)({"image": image})
    assert torch.equal(ours["pixel_values"], reference["pixel_values"])


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_uint8_tensor_input_matches_reference(channels):
    pixels = np.asarray(photo(203, 97, seed=channels).convert("RGBA"))
    if channels == 4:
        pixels = pixels.copy()
        pixels[..., 3] = np.arange(203, dtype=np.uint8)[None, :]  # every alpha value from 0 up
    chw = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
    tensor = chw[:1] if channels == 1 else chw[:channels]
    assert_same_as_reference(tensor)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_other_dtypes_are_the_float32_reference_rounded(dtype):
    image = photo(777, 555, seed=2)
    expected, _ = reference_image(image)
    out = Qwen2_5_VLImageTransform(dtype=dtype)({"image": image})
    assert out["pixel_values"].dtype == dtype
    assert torch.equal(out["pixel_values"], expected.to(dtype))


def test_output_has_each_patch_twice_for_the_temporal_slots():
    out = Qwen2_5_VLImageTransform()({"image": photo(100, 60)})
    slots = out["pixel_values"].view(-1, 3, 2, 14 * 14)
    assert torch.equal(slots[:, :, 0], slots[:, :, 1])


def test_sample_keys_are_added_and_kept():
    sample = {"image": photo(64, 64), "id": "s1"}
    out = Qwen2_5_VLImageTransform()(sample)
    assert out["id"] == "s1" and out["image"] is sample["image"]
    assert out["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert "pixel_values_videos" not in out


def test_smart_resize_matches_reference_over_many_sizes():
    rng = np.random.default_rng(0)
    # Every remainder mod 28 (including the x.5 ties that round to even), tiny to huge sizes, all budgets.
    sides = list(range(1, 120)) + [14 + 28 * k for k in range(5, 200, 7)] + rng.integers(1, 9000, 150).tolist()
    budgets = [DEFAULT, RELEASED, SMALL, TINY_MAX, (100352, 602112)]
    for height in sides[::3]:
        for width in sides[1::3]:
            if max(height, width) / min(height, width) > 200:
                continue
            for budget in budgets:
                assert smart_resize(height, width, 28, *budget) == reference_smart_resize(height, width, 28, *budget)


@pytest.mark.parametrize("bad", [{"min_pixels": 0}, {"min_pixels": 5000, "max_pixels": 4000}, {"dtype": torch.int64}])
def test_invalid_options_are_refused(bad):
    with pytest.raises(ValueError):
        Qwen2_5_VLImageTransform(**bad)


@pytest.mark.parametrize("value", ["photo.png", photo(32, 32)], ids=["path", "pil_image"])
def test_a_bare_image_instead_of_a_sample_dict_is_a_type_error_saying_what_it_takes(value):
    with pytest.raises(TypeError, match=r"takes a sample dict \{'image': \.\.\.\} or \{'video': \.\.\.\}"):
        Qwen2_5_VLImageTransform()(value)


def test_a_sample_without_image_or_video_is_an_error_naming_its_keys():
    with pytest.raises(ValueError, match=r"no 'image' or 'video' to transform \(keys: \['img'\]\)"):
        Qwen2_5_VLImageTransform()({"img": photo(32, 32)})
