"""Per-image options (qwen-vl-utils' ``min_pixels``, ``max_pixels``, ``resized_height``, ``resized_width``): the
grid qwen-vl-utils computes, pixels bit-identical to transformers' processor run with the budgets used."""

import pytest
import torch
from PIL import Image
from support.image_reference import reference_image
from support.media import photo
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

from qwenvl_data.errors import SampleError
from qwenvl_data.image import Qwen2_5_VLImageTransform

# qwen-vl-utils' fetch_image: IMAGE_FACTOR 28, and its own MIN_PIXELS / MAX_PIXELS for an explicit size.
FACTOR, QWEN_VL_UTILS_MIN, QWEN_VL_UTILS_MAX = 28, 4 * 28 * 28, 16384 * 28 * 28
IMAGE = photo(333, 250, 4)


@pytest.mark.parametrize(
    ("min_pixels", "max_pixels"), [(3136, 200 * 28 * 28), (600 * 28 * 28, 2000 * 28 * 28), (3136, 28 * 28 * 4)]
)
def test_per_image_budget_gives_qwen_vl_utils_grid_and_the_reference_pixels(min_pixels, max_pixels):
    out = Qwen2_5_VLImageTransform()({"image": IMAGE, "min_pixels": min_pixels, "max_pixels": max_pixels})
    height, width = hf_smart_resize(IMAGE.height, IMAGE.width, FACTOR, min_pixels, max_pixels)
    assert out["image_grid_thw"].tolist() == [[1, height // 14, width // 14]]
    pixels, grid = reference_image(IMAGE, min_pixels=min_pixels, max_pixels=max_pixels)
    assert torch.equal(out["image_grid_thw"], grid)
    assert torch.equal(out["pixel_values"], pixels)  # same computation: bit-identical


def test_resized_height_and_width_give_qwen_vl_utils_size_whatever_the_budget():
    transform = Qwen2_5_VLImageTransform(max_pixels=28 * 28 * 16)  # a budget the explicit size ignores
    out = transform({"image": IMAGE, "resized_height": 300, "resized_width": 410})
    height, width = hf_smart_resize(300, 410, FACTOR, QWEN_VL_UTILS_MIN, QWEN_VL_UTILS_MAX)
    assert out["image_grid_thw"].tolist() == [[1, height // 14, width // 14]]
    # qwen-vl-utils resizes (PIL's default resample, bicubic), then the processor keeps that size.
    resized = IMAGE.resize((width, height), Image.Resampling.BICUBIC)
    pixels, _ = reference_image(resized, min_pixels=height * width, max_pixels=height * width)
    assert torch.equal(out["pixel_values"], pixels)


def test_an_image_option_overrides_only_its_own_side_of_the_transforms_budget():
    transform = Qwen2_5_VLImageTransform(min_pixels=3136, max_pixels=100 * 28 * 28)
    small = photo(40, 30, 1)
    out = transform({"image": small, "min_pixels": 64 * 28 * 28})  # max_pixels stays the transform's
    height, width = hf_smart_resize(30, 40, FACTOR, 64 * 28 * 28, 100 * 28 * 28)
    assert out["image_grid_thw"].tolist() == [[1, height // 14, width // 14]]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"resized_height": 280}, "resized_height and resized_width must be given together"),
        ({"max_pixels": 0}, "max_pixels must be a positive int"),
        ({"min_pixels": 5000, "max_pixels": 4000}, "min_pixels 5000 > max_pixels 4000"),
        ({"min_pixels": 2 * 1003520}, "min_pixels 2007040 > max_pixels 1003520"),
    ],
)
def test_bad_image_options_are_errors_naming_the_option(options, message):
    with pytest.raises(SampleError, match=message):
        Qwen2_5_VLImageTransform().encode_image(IMAGE, **options)


def test_options_beside_both_an_image_and_a_video_are_refused():
    with pytest.raises(ValueError, match="both an image and a video"):
        Qwen2_5_VLImageTransform()({"image": IMAGE, "video": [IMAGE, IMAGE], "max_pixels": 3136 * 4})
