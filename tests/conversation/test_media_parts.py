"""One part parser for records and for messages handed to the transform: per-item options reach the pixels from
either path, keys holding None are unset, and every setting that can come from two places obeys one precedence."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from support.datasets_records import write_jsonl, write_photos
from support.image_reference import reference_image
from support.media import video_frames
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize
from torchtune.data import Message

from qwenvl_data.conversation._layouts import to_conversation
from qwenvl_data.datasets import multimodal_chat_dataset
from qwenvl_data.errors import InvalidConversationError
from qwenvl_data.transform import Qwen2_5_VLTransform

Q, A = "What is shown?", "A photo."
BUDGET = {"min_pixels": 3136, "max_pixels": 64 * 28 * 28}


@pytest.fixture(scope="module")
def transform(vocab_files):
    return Qwen2_5_VLTransform(*vocab_files)


@pytest.fixture
def photos(tmp_path):
    write_photos(tmp_path, ["a.png", "b.png"], size=(300, 200))
    return tmp_path


def image_record(image_part: dict, **fields) -> dict:
    return {"messages": [{"role": "user", "content": [image_part, {"type": "text", "text": Q}]},
                         {"role": "assistant", "content": [{"type": "text", "text": A}]}], **fields}  # fmt: skip


def load(tmp_path, records, transform, name="d.jsonl", **kwargs):
    return multimodal_chat_dataset(transform, source="jsonl", data_files=str(write_jsonl(tmp_path / name, records)),
                                   image_dir=str(tmp_path), **kwargs)  # fmt: skip


def assert_same(got: dict, expected: dict) -> None:
    assert got["tokens"] == expected["tokens"] and got["labels"] == expected["labels"]
    for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts"):
        assert (key in got) == (key in expected) and (key not in got or torch.equal(got[key], expected[key])), key


def test_a_records_per_image_budget_reaches_the_pixels_as_the_reference_computes_them(tmp_path, photos, transform):
    sample = load(tmp_path, [image_record({"type": "image", "image": "a.png", **BUDGET})], transform)[0]
    pixels, grid = reference_image(Image.open(photos / "a.png").convert("RGB"), **BUDGET)
    assert torch.equal(sample["image_grid_thw"], grid) and torch.equal(sample["pixel_values"], pixels)
    assert sample["tokens"].count(151655) == int(grid.prod()) // 4


def test_per_image_options_mean_the_same_in_a_record_a_dict_message_and_a_torchtune_message(photos, transform):
    path = str(photos / "a.png")
    record = load(photos, [image_record({"type": "image", "image": "a.png", **BUDGET})], transform)[0]
    as_dict = transform({"messages": image_record({"type": "image", "image": path, **BUDGET})["messages"]})
    as_message = transform({"messages": [
        Message("user", [{"type": "image", "content": path, **BUDGET}, {"type": "text", "content": Q}]),
        Message("assistant", A),
    ]})  # fmt: skip
    assert_same(as_dict, record)
    assert_same(as_message, record)


def test_an_image_parts_budget_wins_over_the_transforms_and_equals_it_given_there(photos, vocab_files):
    part = {"type": "image", "image": str(photos / "a.png")}
    budget_in_part = Qwen2_5_VLTransform(*vocab_files, max_pixels=1003520)(
        {"messages": image_record({**part, **BUDGET})["messages"]})
    budget_in_transform = Qwen2_5_VLTransform(*vocab_files, **BUDGET)({"messages": image_record(part)["messages"]})
    assert_same(budget_in_part, budget_in_transform)
    default = Qwen2_5_VLTransform(*vocab_files)({"messages": image_record(part)["messages"]})
    assert not torch.equal(default["image_grid_thw"], budget_in_part["image_grid_thw"])  # the option did act


ARROW_NONES = {"image_url": None, "text": None, "video": None, "min_pixels": None, "max_pixels": None,
               "resized_height": None, "resized_width": None, "fps": None}  # fmt: skip


def test_a_row_whose_unset_keys_hold_none_equals_the_clean_record(tmp_path, photos, transform):
    clean = image_record({"type": "image", "image": "a.png"})
    with_nones = {
        "messages": [
            {"role": "user", "content": [{"type": "image", "image": "a.png", **ARROW_NONES},
                                         {"type": "text", **{**ARROW_NONES, "text": Q}, "image": None}]},
            {"role": "assistant", "content": [{"type": "text", **{**ARROW_NONES, "text": A}, "image": None}]},
        ],
        "images": None, "videos": None, "system": None, "id": None,
    }  # fmt: skip
    ds = load(tmp_path, [clean, with_nones], transform)
    assert_same(ds[1], ds[0])
    # and as Arrow writes them: every row every key of the file
    records = [clean, image_record({"type": "image", "image": "b.png", "max_pixels": 28 * 28 * 16})]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "t.parquet")
    table = pa.Table.from_pylist(records).to_pylist()
    assert table[0]["messages"][0]["content"][0]["max_pixels"] is None  # the Arrow row holds the key, unset
    parquet = multimodal_chat_dataset(transform, source="parquet", data_files=str(tmp_path / "t.parquet"),
                                      image_dir=str(tmp_path))  # fmt: skip
    assert_same(parquet[0], ds[0])
    height, width = hf_smart_resize(200, 300, 28, 3136, 28 * 28 * 16)  # b.png's own budget
    assert parquet[1]["image_grid_thw"].tolist() == [[1, height // 14, width // 14]]


def test_an_image_url_holding_none_does_not_hide_the_image_path(photos, transform):
    path = str(photos / "a.png")
    given = transform({"messages": image_record({"type": "image", "image": path, "image_url": None})["messages"]})
    assert_same(given, transform({"messages": image_record({"type": "image", "image": path})["messages"]}))


def test_a_text_part_with_an_image_key_holding_none_is_text_in_the_dataset_and_the_transform(photos, transform):
    record = {"messages": [{"role": "user", "content": [{"type": "text", "text": Q, "image": None}]},
                           {"role": "assistant", "content": A}]}  # fmt: skip
    direct = transform(record)
    assert "pixel_values" not in direct
    assert_same(load(photos, [record], transform)[0], direct)


def clip_record(**video_part_options) -> dict:
    return {"messages": [{"role": "user", "content": [{"type": "video", "video": "clip", **video_part_options},
                                                      {"type": "text", "text": Q}]},
                         {"role": "assistant", "content": A}]}  # fmt: skip


@pytest.fixture
def clip(tmp_path):
    (tmp_path / "clip").mkdir()
    for i, frame in enumerate(video_frames(4, 64, 56, 3)):
        frame.save(tmp_path / "clip" / f"f{i}.png")
    return tmp_path


CLIP_OPTIONS = {"fps": 1.0, "min_pixels": 3136, "max_pixels": 4 * 3136}


def test_the_datasets_video_options_equal_the_same_options_on_the_part(clip, transform):
    from_dataset = load(clip, [clip_record()], transform, video_options=CLIP_OPTIONS)[0]
    from_part = load(clip, [clip_record(**CLIP_OPTIONS)], transform, name="e.jsonl")[0]
    assert_same(from_dataset, from_part)
    height, width = hf_smart_resize(56, 64, 28, CLIP_OPTIONS["min_pixels"], CLIP_OPTIONS["max_pixels"])
    assert from_part["video_grid_thw"].tolist() == [[2, height // 14, width // 14]]  # 4 frames, 2 per patch
    assert from_part["second_per_grid_ts"].tolist() == [2.0]  # temporal_patch_size / fps


def test_a_video_parts_own_option_wins_over_the_datasets(clip, transform):
    both = load(clip, [clip_record(fps=4.0)], transform, video_options=CLIP_OPTIONS)[0]
    alone = load(clip, [clip_record(**{**CLIP_OPTIONS, "fps": 4.0})], transform, name="e.jsonl")[0]
    assert_same(both, alone)
    assert both["second_per_grid_ts"].tolist() == [0.5]


def test_the_datasets_video_options_win_over_the_transforms_video_defaults(clip, vocab_files):
    dataset_fps = load(clip, [clip_record()], Qwen2_5_VLTransform(*vocab_files, video_fps=8.0),
                       video_options={"fps": 1.0})[0]  # fmt: skip
    transform_fps = load(clip, [clip_record()], Qwen2_5_VLTransform(*vocab_files, video_fps=1.0), name="e.jsonl")[0]
    assert_same(dataset_fps, transform_fps)
    assert dataset_fps["second_per_grid_ts"].tolist() == [2.0]


@pytest.mark.parametrize(
    ("part", "message"),
    [
        ({"type": "image", "image": "a.png", "image_url": {"url": "a.png"}}, "holds both 'image' and 'image_url'"),
        ({"type": "image", "image": "a.png", "fps": 2.0}, r"image part has key\(s\) \['fps'\]"),
        ({"type": "image", "image": "a.png", "resized_width": 280}, "resized_height and resized_width"),
        ({"type": "video", "video": "clip", "resized_height": 280}, r"video part has key\(s\) \['resized_height'\]"),
        ({"type": "text", "text": Q, "image": "a.png"}, r"text part has key\(s\) \['image'\]"),
    ],
    ids=["two_payloads", "video_option_on_image", "half_a_size", "image_option_on_video", "text_with_image"],
)
def test_a_part_holding_what_it_cannot_use_is_refused_by_name_in_both_paths(photos, transform, part, message):
    with pytest.raises(InvalidConversationError, match=message):
        to_conversation(image_record(part), None, str(photos))
    with pytest.raises(InvalidConversationError, match=r"sample \(7\): message 0: .*" + message):
        transform({"messages": image_record(part)["messages"], "id": 7})


def test_errors_name_the_sample_by_index_and_id_in_the_dataset(tmp_path, photos, transform):
    records = [image_record({"type": "image", "image": "a.png"}, id="ok"),
               image_record({"type": "image", "image": "a.png", "resized_width": 9}, id="half")]  # fmt: skip
    ds = load(tmp_path, records, transform)
    with pytest.raises(InvalidConversationError, match=r"^sample 1 \(half\): message 0: .*resized_height"):
        ds[1]
