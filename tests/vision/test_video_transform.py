"""Video clips: every frame processed exactly as an image with the video pixel budget, frames paired into
temporal patches (frame 2t and 2t + 1 in patch t), an odd clip padded with its last frame."""

import numpy as np
import pytest
import torch
from support.image_reference import frame_planes, reference_image
from support.media import photo, video_frames
from PIL import Image

from qwenvl_data.errors import ImageLoadError
from qwenvl_data.image import Qwen2_5_VLImageTransform, smart_resize

VIDEO_BUDGET = (100352, 602112)


def test_clip_of_two_identical_frames_equals_the_image_output():
    frame = photo(480, 360, seed=11)
    expected_values, expected_grid = reference_image(frame, *VIDEO_BUDGET)
    out = Qwen2_5_VLImageTransform()({"video": [frame, frame.copy()]})
    assert torch.equal(out["video_grid_thw"], expected_grid)
    assert torch.equal(out["pixel_values_videos"], expected_values)


@pytest.mark.parametrize("num_frames", [1, 3, 4])
def test_each_frame_equals_the_image_reference_for_that_frame(num_frames):
    frames = video_frames(num_frames, 333, 250, seed=20)
    out = Qwen2_5_VLImageTransform()({"video": frames, "fps": 4.0})
    grid_t = (num_frames + 1) // 2
    planes = frame_planes(out["pixel_values_videos"], out["video_grid_thw"])
    assert planes.shape[:2] == (grid_t, 2)
    padded = frames + [frames[-1]] * (2 * grid_t - num_frames)  # an odd clip repeats its last frame
    for index, frame in enumerate(padded):
        expected_values, expected_grid = reference_image(frame, *VIDEO_BUDGET)
        assert torch.equal(out["video_grid_thw"][0, 1:], expected_grid[0, 1:])
        expected = frame_planes(expected_values, expected_grid)[0, 0]
        assert torch.equal(planes[index // 2, index % 2], expected), f"frame {index}"


def test_grid_and_seconds_per_temporal_patch():
    out = Qwen2_5_VLImageTransform()({"video": video_frames(5, 320, 240), "fps": 3.0})
    height, width = smart_resize(240, 320, 28, *VIDEO_BUDGET)
    assert out["video_grid_thw"].dtype == torch.int64
    assert out["video_grid_thw"].tolist() == [[3, height // 14, width // 14]]
    assert out["pixel_values_videos"].shape == (3 * height // 14 * width // 14, 1176)
    assert out["second_per_grid_ts"].dtype == torch.float32
    assert out["second_per_grid_ts"].tolist() == [pytest.approx(2 / 3.0)]


def test_default_fps_is_two_frames_per_second():
    out = Qwen2_5_VLImageTransform()({"video": video_frames(2, 64, 64)})
    assert out["second_per_grid_ts"].tolist() == [1.0]


def test_video_budget_is_separate_from_the_image_budget():
    frame = photo(1280, 720, seed=3)
    transform = Qwen2_5_VLImageTransform(max_pixels=12845056, video_min_pixels=3136, video_max_pixels=28 * 28 * 64)
    out = transform({"video": [frame, frame], "image": frame})
    video_size = smart_resize(720, 1280, 28, 3136, 28 * 28 * 64)
    image_size = smart_resize(720, 1280, 28, 3136, 12845056)
    assert out["video_grid_thw"].tolist() == [[1, video_size[0] // 14, video_size[1] // 14]]
    assert out["image_grid_thw"].tolist() == [[1, image_size[0] // 14, image_size[1] // 14]]
    assert video_size != image_size
    expected, _ = reference_image(frame, 3136, 28 * 28 * 64)
    assert torch.equal(out["pixel_values_videos"], expected)


def test_uint8_tensor_clip_equals_the_same_frames_as_images():
    frames = video_frames(3, 200, 150, seed=5)
    tensor = torch.stack([torch.from_numpy(np.array(f)).permute(2, 0, 1) for f in frames])
    transform = Qwen2_5_VLImageTransform()
    from_tensor = transform({"video": tensor, "fps": 1.0})
    from_frames = transform({"video": frames, "fps": 1.0})
    assert torch.equal(from_tensor["pixel_values_videos"], from_frames["pixel_values_videos"])
    assert torch.equal(from_tensor["video_grid_thw"], from_frames["video_grid_thw"])


def test_frames_from_files_are_loaded(tmp_path):
    frames = video_frames(2, 120, 90, seed=8)
    paths = []
    for index, frame in enumerate(frames):
        paths.append(tmp_path / f"frame{index}.png")
        frame.save(paths[-1])
    transform = Qwen2_5_VLImageTransform()
    from_files, from_images = transform({"video": paths}), transform({"video": frames})
    assert torch.equal(from_files["pixel_values_videos"], from_images["pixel_values_videos"])


def test_bfloat16_video_is_the_float32_result_rounded():
    frames = video_frames(2, 150, 100, seed=6)
    float32 = Qwen2_5_VLImageTransform()({"video": frames})["pixel_values_videos"]
    bfloat16 = Qwen2_5_VLImageTransform(dtype=torch.bfloat16)({"video": frames})["pixel_values_videos"]
    assert bfloat16.dtype == torch.bfloat16 and torch.equal(bfloat16, float32.to(torch.bfloat16))


def test_frames_of_different_sizes_are_refused():
    with pytest.raises(ImageLoadError, match="one size"):
        Qwen2_5_VLImageTransform()({"video": [photo(64, 64), photo(64, 65)]})


def test_empty_clip_and_bad_fps_are_refused():
    with pytest.raises(ImageLoadError, match="at least one frame"):
        Qwen2_5_VLImageTransform()({"video": []})
    with pytest.raises(ValueError, match="fps"):
        Qwen2_5_VLImageTransform()({"video": [photo(64, 64)], "fps": 0})


def test_missing_frame_file_raises_image_load_error(tmp_path):
    with pytest.raises(ImageLoadError, match="frame9.png"):
        Qwen2_5_VLImageTransform()({"video": [photo(64, 64), tmp_path / "frame9.png"]})


def test_too_elongated_video_is_refused():
    frame = Image.new("RGB", (4020, 20))
    with pytest.raises(ImageLoadError, match="video.*aspect ratio"):
        Qwen2_5_VLImageTransform()({"video": [frame]})
