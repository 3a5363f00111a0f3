"""Qwen3-VL's images and videos against transformers 5.24: pixels of images bit-identical to
``Qwen2VLImageProcessorPil`` configured as the released preprocessor_config.json (patch 16: 1536 values per row,
factor 32, mean/std 0.5), grids identical; videos by ``Qwen3VLVideoProcessor``'s rules (which frames, the
clip-budget size, timestamps), each frame's pixels the image steps on the frame resized to that size."""

import pytest
import torch
from support.image_reference import frame_planes
from support.media import EIGHT_BIT_MODES, colour_index, image_in_mode, photo, video_frames, write_video
from support.qwen3_reference import (
    image_processor,
    reference_image,
    sampled_indices,
    video_grid,
    video_size,
    video_text,
)
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

from qwenvl_data.image import Qwen2_5_VLImageTransform
from qwenvl_data.models import QWEN3_VL
from qwenvl_data.vision._resize import clip_smart_resize
from qwenvl_data.video import patch_timestamps


@pytest.fixture(scope="module")
def transform() -> Qwen2_5_VLImageTransform:
    return Qwen2_5_VLImageTransform(**QWEN3_VL.transform_args())


@pytest.mark.parametrize("size", [(640, 480), (333, 250), (37, 901), (2000, 1500), (16, 16), (1, 1)])
def test_photos_of_any_size_are_bit_identical_to_the_image_processor(transform, size):
    image = photo(*size, seed=sum(size))
    expected_values, expected_grid = reference_image(image)
    values, grid = transform.encode_image(image)
    assert values.shape[1] == 1536 and torch.equal(grid, expected_grid)
    assert torch.equal(values, expected_values)


@pytest.mark.parametrize("mode", EIGHT_BIT_MODES)
def test_every_eight_bit_mode_is_bit_identical(transform, mode):
    image = image_in_mode(mode, 301, 207, seed=4)
    expected_values, expected_grid = reference_image(image)
    values, grid = transform.encode_image(image)
    assert torch.equal(grid, expected_grid) and torch.equal(values, expected_values)


def test_the_clip_size_is_transformers_smart_resize_over_frames_and_budget():
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize

    for frames in (2, 3, 4, 5, 7, 16, 61, 768):
        for height, width in ((480, 640), (720, 1280), (31, 500), (8, 8), (1080, 1920), (250, 333), (20, 3000)):
            for low, high in ((4096, 25165824), (131072, 786432), (4096, 4096 * 8)):
                expected = smart_resize(frames, height, width, 2, 32, low, high)
                assert clip_smart_resize(frames, height, width, 2, 32, low, high) == expected, (frames, height, width)


@pytest.mark.parametrize("num_frames", [2, 3, 6])
def test_frames_given_directly_each_equal_the_image_steps_at_the_clip_size(transform, num_frames):
    frames = video_frames(num_frames, 333, 250, seed=num_frames)
    out = transform({"video": frames, "fps": 3.0})
    assert out["video_grid_thw"].tolist() == [video_grid(num_frames, 250, 333)]
    height, width = video_size(num_frames, 250, 333)
    planes = frame_planes(out["pixel_values_videos"], out["video_grid_thw"], patch=16)
    padded = frames + [frames[-1]] * (num_frames % 2)  # an odd clip repeats its last frame
    still = image_processor(do_resize=False)  # the frame resized by PIL bicubic, then the image processor's steps
    for index, frame in enumerate(padded):
        values = still(images=frame.resize((width, height), 3), return_tensors="pt")
        expected = frame_planes(values["pixel_values"], values["image_grid_thw"], patch=16)[0, 0]
        assert torch.equal(planes[index // 2, index % 2], expected), f"frame {index}"
    # Frame i is at i / fps: each temporal patch's time is transformers' mean of its first and last frame.
    expected_times = Qwen3VLProcessor._calculate_timestamps(None, list(range(num_frames)), 3.0, 2)
    assert out["video_timestamps"] == expected_times == patch_timestamps([i / 3.0 for i in range(num_frames)], 2)


@pytest.mark.parametrize(("total", "rate", "options"), [(90, 30, {}), (25, 10, {}), (7, 30, {}), (300, 24, {}),
                                                        (50, 25, {"nframes": 5})])  # fmt: skip
def test_a_video_file_keeps_the_frames_transformers_samples_and_writes_their_times(tmp_path, transform, total, rate,
                                                                                   options):  # fmt: skip
    path = write_video(tmp_path / "clip.mp4", total, 64, 48, rate=rate)
    expected = sampled_indices(total, float(rate), **({"num_frames": options["nframes"]} if options else {}))
    _, grid, _, timestamps = transform._encode_video(path, **options)
    assert grid.tolist() == [video_grid(len(expected), 48, 64)]
    assert timestamps == Qwen3VLProcessor._calculate_timestamps(None, list(expected), float(rate), 2)
    assert video_text(grid[0].tolist(), expected, float(rate)).count(" seconds>") == len(timestamps) == grid[0, 0]


def test_video_frames_decoded_are_the_sampled_ones(tmp_path):
    from qwenvl_data.video import VideoOptions
    from qwenvl_data.vision._video_file import read_video_file

    path = write_video(tmp_path / "clip.mp4", 90, 64, 48, rate=30)
    frames, fps, times = read_video_file(path, VideoOptions(), sampling="transformers")
    expected = sampled_indices(90, 30.0)
    assert [colour_index(frame) for frame in frames] == expected
    assert times == [index / 30.0 for index in expected] and fps == pytest.approx(len(expected) / 3)


def test_total_pixels_is_refused_under_the_clip_budget(transform):
    from qwenvl_data.errors import SampleError

    with pytest.raises(SampleError, match="total_pixels"):
        transform({"video": video_frames(2, 64, 64), "total_pixels": 10**6})
    with pytest.raises(ValueError, match="video_total_pixels"):
        Qwen2_5_VLImageTransform(**{**QWEN3_VL.transform_args(), "video_total_pixels": 10**6})
