"""Video files: qwen-vl-utils' frame selection and budgets on real H.264 clips made with PyAV, display
rotation, and errors that name the file. Frame i of a generated clip is a flat colour encoding i, so the
frames kept can be read back; expected picks are worked out by hand from the rules in the docstrings of
``qwenvl_data.vision._video_sampling`` (qwen-vl-utils' ``smart_nframes``, ``calculate_video_frame_range`` and
``torch.linspace(...).round()``)."""

import os
from fractions import Fraction

import numpy as np
import pytest
import torch
from support.media import colour_index, photo, write_video
from PIL import Image

from qwenvl_data.datasets import multimodal_chat_dataset
from qwenvl_data.errors import ImageLoadError, InvalidConversationError, SampleError
from qwenvl_data.image import Qwen2_5_VLImageTransform
from qwenvl_data.video import VideoOptions
from qwenvl_data.vision._video_file import read_video_file


def kept(path, **options) -> tuple[list[int], float]:
    frames, fps, _ = read_video_file(path, VideoOptions(**options))
    return [colour_index(frame) for frame in frames], fps


def test_short_clip_with_fewer_frames_than_min_frames_keeps_an_even_count(tmp_path):
    # 3 frames: wanted 3/30*2 = 0.2, raised to min_frames 4, capped at floor2(3) = 2 -> linspace(0, 2, 2)
    picks, fps = kept(write_video(tmp_path / "short.mp4", 3, 32, 32))
    assert picks == [0, 2]
    assert fps == pytest.approx(2 / 3 * 30)


def test_one_frame_clip_is_kept_and_padded_to_a_temporal_patch(tmp_path):
    path = write_video(tmp_path / "one.mp4", 1, 56, 56)
    assert kept(path)[0] == [0]
    out = Qwen2_5_VLImageTransform(video_min_pixels=3136)({"video": path})
    assert out["video_grid_thw"].tolist() == [[1, 4, 4]]


def test_max_frames_caps_the_count_and_spreads_it_over_the_clip(tmp_path):
    # 40 frames sampled at 30 fps = 40 wanted; max_frames 9 -> 8; round(39 * i / 7)
    picks, fps = kept(write_video(tmp_path / "long.mp4", 40, 32, 32), fps=30, max_frames=9)
    assert picks == [0, 6, 11, 17, 22, 28, 33, 39]
    assert fps == pytest.approx(8 / 40 * 30)


def test_default_max_frames_is_768(tmp_path):
    picks, _ = kept(write_video(tmp_path / "long.mp4", 800, 16, 16), fps=30)
    assert len(picks) == 768
    assert picks == np.round(np.linspace(0, 799, 768)).astype(int).tolist()


def test_fractional_frame_rate_29_97(tmp_path):
    path = write_video(tmp_path / "ntsc.mp4", 100, 32, 32, rate=Fraction(30000, 1001))
    # 100 frames = 3.337 s -> 6.67 wanted -> 6; linspace(0, 99, 6) = 0, 19.8, 39.6, 59.4, 79.2, 99
    picks, fps = kept(path)
    assert picks == [0, 20, 40, 59, 79, 99]
    assert fps == pytest.approx(6 / 100 * 30000 / 1001)
    # from 1.0 s: first frame ceil(1.0 * 29.97) = 30; 70 frames -> 4.67 -> 4; linspace(30, 99, 4)
    assert kept(path, video_start=1.0)[0] == [30, 53, 76, 99]


def test_variable_frame_rate_picks_frames_evenly_in_time(tmp_path):
    # 10 frames 100 ms apart, then 20 frames 25 ms apart: 0 .. 1.475 s
    times = [100 * i for i in range(10)] + [1000 + 25 * i for i in range(20)]
    path = write_video(tmp_path / "vfr.mkv", 30, 32, 32, times_ms=times)
    # instants 0, 0.492, 0.983, 1.475 s -> nearest frames at 0.5 s (5), 1.0 s (10), 1.475 s (29);
    # evenly spaced indices (0, 10, 19, 29) would not be evenly spaced in time
    assert kept(path, nframes=4)[0] == [0, 5, 10, 29]


def test_start_end_window_in_seconds(tmp_path):
    path = write_video(tmp_path / "ten.mp4", 300, 32, 32)  # 10 s at 30 fps
    # frames ceil(3.5 * 30) = 105 .. floor(9 * 30) = 270: 166 frames = 5.53 s -> 11.07 -> 10
    picks, fps = kept(path, video_start=3.5, video_end=9)
    assert picks == [105, 123, 142, 160, 178, 197, 215, 233, 252, 270]
    assert fps == pytest.approx(10 / 166 * 30)
    # end clamped to the clip; nframes 3 -> round(1.5) * 2 = 4 (ties to even); round(299 * i / 3)
    assert kept(path, nframes=3, video_end=12)[0] == [0, 100, 199, 299]


@pytest.mark.parametrize(
    ("window", "message"),
    [({"video_start": 10.5}, "starts after the clip ends"), ({"video_start": 4, "video_end": 3}, "is empty")],
)
def test_window_outside_the_clip_names_the_file(tmp_path, window, message):
    path = write_video(tmp_path / "ten.mp4", 300, 16, 16)
    with pytest.raises(ImageLoadError, match=f"ten.mp4.*{message}"):
        kept(path, **window)


def test_nframes_beyond_the_clip_is_an_error(tmp_path):
    with pytest.raises(ImageLoadError, match=r"few.mp4.*nframes=8"):
        kept(write_video(tmp_path / "few.mp4", 5, 16, 16), nframes=8)


def test_total_pixels_lowers_the_frame_size(tmp_path):
    path = write_video(tmp_path / "sq.mp4", 8, 448, 448)
    transform = Qwen2_5_VLImageTransform()
    assert transform({"video": path, "nframes": 8})["video_grid_thw"].tolist() == [[4, 32, 32]]  # 448 fits
    # 600000 / 8 * 2 = 150000 per frame: sqrt(200704 / 150000) = 1.157 -> floor28(387.3) = 364
    out = transform({"video": path, "nframes": 8, "total_pixels": 600000})
    assert out["video_grid_thw"].tolist() == [[4, 26, 26]]
    # a tiny budget stops at 1.05 * min_pixels = 105369: floor28(448 / sqrt(200704 / 105369)) = 308
    out = transform({"video": path, "nframes": 8, "total_pixels": 1000})
    assert out["video_grid_thw"].tolist() == [[4, 22, 22]]


def test_second_per_grid_ts_follows_the_rate_sampled(tmp_path):
    path = write_video(tmp_path / "ntsc.mp4", 100, 32, 32, rate=Fraction(30000, 1001))
    out = Qwen2_5_VLImageTransform()({"video": path})
    assert out["second_per_grid_ts"].item() == pytest.approx(2 / (6 / 100 * 30000 / 1001))


def test_rotation_90_comes_out_upright(tmp_path):
    upright = Image.new("RGB", (48, 64), (0, 0, 255))  # portrait, red block at the top left
    upright.paste((255, 0, 0), (0, 0, 24, 16))
    stored = upright.transpose(Image.Transpose.ROTATE_270)  # the sensor's landscape frame
    path = write_video(tmp_path / "phone.mp4", 2, 64, 48, rotation=90, pictures=[stored, stored])
    frames, _, _ = read_video_file(path, VideoOptions())
    assert frames[0].size == (48, 64)
    pixels = np.asarray(frames[0], dtype=np.int32)
    assert np.abs(pixels[4:12, 4:20] - [255, 0, 0]).max() < 40  # top left is red
    assert np.abs(pixels[-12:-4, -20:-4] - [0, 0, 255]).max() < 40  # bottom right is blue


def test_each_kept_frame_equals_the_image_reference_of_that_frame(tmp_path):
    path = write_video(tmp_path / "photo.mp4", 6, 96, 64, pictures=[photo(96, 64, seed=i) for i in range(6)])
    transform = Qwen2_5_VLImageTransform(video_min_pixels=3136)
    frames, fps, _ = read_video_file(path, VideoOptions(nframes=4))
    from_file = transform({"video": path, "nframes": 4})
    from_frames = transform({"video": frames, "fps": fps})
    for key in ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts"):
        assert torch.equal(from_file[key], from_frames[key])


def write_audio_only(path) -> str:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return str(path)


def write_no_frames(path) -> str:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        container.start_encoding()  # the header only
    return str(path)


def damaged(tmp_path) -> str:
    path = write_video(tmp_path / "damaged.mp4", 60, 64, 48, pictures=[photo(64, 48, seed=i) for i in range(60)])
    data = bytearray(open(path, "rb").read())
    middle = len(data) // 2
    data[middle : middle + 2000] = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    with open(path, "wb") as file:
        file.write(data)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: str(d / "missing.mp4"), "missing.mp4 does not exist"),
        (lambda d: (d / "text.mp4").write_text("not a video") and str(d / "text.mp4"), "text.mp4 is not a video"),
        (lambda d: write_audio_only(d / "audio.m4a"), "audio.m4a has no video stream"),
        (lambda d: write_no_frames(d / "empty.mkv"), "empty.mkv has no video frames"),
        (damaged, "damaged.mp4 is damaged at frame"),
    ],
    ids=["missing", "not_a_video", "no_video_stream", "zero_frames", "corrupt_middle"],
)
def test_unreadable_files_name_the_file_and_the_cause(tmp_path, make, message):
    with pytest.raises(ImageLoadError, match=message):
        read_video_file(make(tmp_path), VideoOptions(fps=30))  # every frame: the damage is decoded


def test_allow_truncated_samples_the_frames_before_the_damage(tmp_path):
    path = damaged(tmp_path)
    good, _, _ = read_video_file(path, VideoOptions(fps=30, allow_truncated=True))
    assert 2 <= len(good) < 60 and len(good) % 2 == 0  # every frame before the damage, an even count
    before, _, _ = read_video_file(path, VideoOptions(fps=30, video_end=(len(good) - 1) / 30))  # no damage in it
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(good, before, strict=True))


def test_file_only_options_on_frames_are_refused():
    with pytest.raises(SampleError, match="nframes"):
        Qwen2_5_VLImageTransform()({"video": [photo(32, 32)] * 4, "nframes": 2})


def test_dataset_options_and_part_options_reach_the_loader(tmp_path, vocab_files):
    from qwenvl_data.transform import Qwen2_5_VLTransform

    write_video(tmp_path / "ten.mp4", 300, 56, 56)
    records = [
        {"messages": [{"role": "user", "content": [{"type": "video", "video": "ten.mp4"}]},
                      {"role": "assistant", "content": "ok"}]},
        {"messages": [{"role": "user", "content": [
            {"type": "video", "video": "ten.mp4", "fps": 1, "max_frames": 64, "video_start": 3.5, "video_end": 9}]},
            {"role": "assistant", "content": "ok"}]},
    ]
    import json

    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    transform = Qwen2_5_VLTransform(*vocab_files, video_min_pixels=3136)
    dataset = multimodal_chat_dataset(
        transform, source="jsonl", data_files=str(tmp_path / "data.jsonl"), video_options={"fps": 0.5}
    )
    # dataset default 0.5 fps: 10 s -> 5 -> floor2 -> 4 frames, 2 temporal patches
    assert dataset[0]["video_grid_thw"].tolist() == [[2, 4, 4]]
    # the part's own keys: frames 105..270 (166 = 5.53 s) at 1 fps -> 5.53 -> min_frames 4 -> 4
    assert dataset[1]["video_grid_thw"].tolist() == [[2, 4, 4]]
    assert dataset[1]["second_per_grid_ts"].item() == pytest.approx(2 / (4 / 166 * 30))
    older_spelling = multimodal_chat_dataset(
        transform, source="jsonl", data_files=str(tmp_path / "data.jsonl"), video_fps=0.5
    )
    assert older_spelling[0]["video_grid_thw"].tolist() == [[2, 4, 4]]
    with pytest.raises(ValueError, match="max_frame"):
        multimodal_chat_dataset(transform, source="jsonl", data_files=str(tmp_path / "data.jsonl"),
                                video_options={"max_frame": 8})


def test_unknown_key_in_a_video_part_is_refused(vocab_files, tmp_path):
    from qwenvl_data.transform import Qwen2_5_VLTransform

    part = {"type": "video", "video": os.fspath(tmp_path / "x.mp4"), "max_frame": 8}
    with pytest.raises(InvalidConversationError, match="max_frame"):
        Qwen2_5_VLTransform(*vocab_files)({"messages": [{"role": "user", "content": [part]}]})


def test_transform_reads_a_file_uri_like_the_plain_path_and_refuses_a_fifo_at_once(tmp_path):
    """A video file given straight to the transform goes through the one media resolver."""
    clip = write_video(tmp_path / "my clip.mp4", 8, 56, 56)
    transform = Qwen2_5_VLImageTransform()
    plain = transform.encode_video(clip)
    uri = transform.encode_video("file://" + str(clip).replace(" ", "%20"))
    assert all(torch.equal(a, b) for a, b in zip(plain, uri, strict=True))
    fifo = tmp_path / "stream.mp4"
    os.mkfifo(fifo)
    with pytest.raises(ImageLoadError, match="FIFO"):
        transform.encode_video(str(fifo))
