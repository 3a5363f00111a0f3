"""Datasets with the real Qwen2_5_VLTransform (real vocabulary) and collator: LLaVA records give the tokens and
pixels transformers gives for Qwen's own LLaVA recipe; bad images are named or counted; synthetic answers are
the trained labels."""

import struct
import zlib

import pytest
import torch
from support.datasets_records import llava_turns, write_jsonl, write_photos
from PIL import Image
from support.text_reference import hf_tokenizer, image_tokens
from torch.utils.data import DataLoader
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from qwenvl_data._constants import IGNORE_INDEX, VIDEO_PAD_ID
from qwenvl_data.collate import Qwen2_5_VLCollator
from qwenvl_data.datasets import multimodal_chat_dataset, streaming_chat_dataset, synthetic_vqa_dataset
from qwenvl_data.errors import ImageLoadError
from qwenvl_data.transform import Qwen2_5_VLTransform

VISION = "<|vision_start|><|image_pad|><|vision_end|>"


@pytest.fixture(scope="module")
def transform(vocab_files):
    return Qwen2_5_VLTransform(*vocab_files, max_seq_len=400)


def llava(i: int, images: list[str], question: str) -> dict:
    return {"id": f"s{i}", "image": images, "conversations": llava_turns(question, f"Answer {i}.")}


def qwen_recipe_ids(tokenizer, chat_template: str, record: dict, images: list[Image.Image]) -> list[int]:
    """Qwen's LLaVA recipe in transformers: each <image> becomes the vision span in place, the template
    renders the strings, each <|image_pad|> is expanded to the image processor's token count."""
    roles = {"human": "user", "gpt": "assistant"}
    messages = [
        {"role": roles[turn["from"]], "content": turn["value"].replace("<image>", VISION)}
        for turn in record["conversations"]
    ]
    text = tokenizer.apply_chat_template(messages, chat_template=chat_template, tokenize=False)
    pieces = text.split("<|image_pad|>")
    text = pieces[0] + "".join("<|image_pad|>" * image_tokens(im) + p for im, p in zip(images, pieces[1:]))
    return tokenizer(text)["input_ids"]


def test_llava_jsonl_matches_transformers_on_qwens_llava_recipe(tmp_path, transform, vocab_files, chat_template):
    paths = write_photos(tmp_path, ["a.jpg", "b.png", "c.png"], size=(150, 90))
    records = [
        llava(0, ["a.jpg"], "<image>\nWhat is in the picture?"),
        llava(1, ["b.png", "c.png"], "Compare <image> with <image>, please."),
    ]
    ds = multimodal_chat_dataset(transform, source="jsonl", data_files=str(write_jsonl(tmp_path / "d.jsonl", records)))
    opened = {p.name: Image.open(p).convert("RGB") for p in paths}
    for i, record in enumerate(records):
        images = [opened[name] for name in record["image"]]
        sample = ds[i]
        assert sample["tokens"] == qwen_recipe_ids(hf_tokenizer(*vocab_files), chat_template, record, images)
        expected = Qwen2VLImageProcessorPil()(images=images, return_tensors="pt")
        assert torch.equal(sample["pixel_values"], expected["pixel_values"])
        assert torch.equal(sample["image_grid_thw"], expected["image_grid_thw"])


def png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims width x height (a decompression bomb for PIL's check)."""
    import io

    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


@pytest.fixture
def bad_image_dir(tmp_path):
    write_photos(tmp_path, ["good.png", "good.jpg"], size=(64, 64))
    jpeg = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "bomb.png").write_bytes(png_claiming(20000, 20000))
    return tmp_path


BAD_IMAGES = ["missing.png", "truncated.jpg", "corrupt.png", "empty.png", "bomb.png"]


def test_each_bad_image_raises_naming_the_sample_and_the_file(bad_image_dir, transform):
    records = [llava(i, [name], "<image> ?") for i, name in enumerate(BAD_IMAGES)]
    path = write_jsonl(bad_image_dir / "bad.jsonl", records)
    ds = multimodal_chat_dataset(transform, source="jsonl", data_files=str(path))
    for i, name in enumerate(BAD_IMAGES):
        with pytest.raises(ImageLoadError, match=rf"sample {i} \(s{i}\): .*{name}") as raised:
            ds[i]
        assert str(raised.value).count("sample") == 1, f"the sample is named more than once: {raised.value}"


def test_skip_counts_bad_images_and_too_long_samples_through_workers_and_collator(bad_image_dir, transform):
    records = []
    for i, name in enumerate(BAD_IMAGES):
        records += [llava(2 * i, ["good.png"], "<image> ok?"), llava(2 * i + 1, [name], "<image> ?")]
    records.append(llava(99, ["good.jpg"], "<image>" + " long" * 500))  # over max_seq_len=400
    records.append(llava(100, ["good.png", "good.jpg"], "<image> one placeholder, two images"))
    path = write_jsonl(bad_image_dir / "mixed.jsonl", records)
    ds = multimodal_chat_dataset(transform, source="jsonl", data_files=str(path), on_error="skip")
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=Qwen2_5_VLCollator())
    batches = list(loader)
    assert sum(len(b["tokens"]) for b in batches) == len(BAD_IMAGES)  # only the good samples remain
    assert sum(int(b["image_grid_thw"].shape[0]) for b in batches) == len(BAD_IMAGES)
    assert {c: n for c, n in ds.stats.items() if n} == {"bad_image": 5, "too_long": 1, "placeholder_mismatch": 1}


def test_a_skip_report_gives_each_causes_first_error_and_a_missing_video_its_own_cause(bad_image_dir, transform):
    records = [llava(0, ["good.png"], "<image> ok?"),
               {"id": "no_clip", "video": "nope.mp4", "conversations": [{"from": "human", "value": "<video> ?"},
                                                                        {"from": "gpt", "value": "A."}]},
               {"id": "orphan", "conversations": [{"from": "human", "value": "Hi"}, {"from": "observation", "value": "21"},
                                                  {"from": "gpt", "value": "ok"}]},
               llava(1, ["missing.png"], "<image> ?")]  # fmt: skip
    path = write_jsonl(bad_image_dir / "why.jsonl", records)
    ds = multimodal_chat_dataset(transform, source="jsonl", data_files=str(path), on_error="skip",
                                 image_dir=str(bad_image_dir))  # fmt: skip
    assert len([b for b in DataLoader(ds, batch_size=1, num_workers=2, collate_fn=lambda b: b) if b[0]]) == 1
    report = ds.processor.stats.report()
    assert {cause: entry["examples"] for cause, entry in report.by_cause.items()} == {
        "bad_image": ["s1"], "bad_video": ["no_clip"], "bad_conversation": ["orphan"]}
    assert report.by_cause["bad_video"]["first_error"] == f"video file {bad_image_dir / 'nope.mp4'} does not exist"
    assert report.by_cause["bad_conversation"]["first_error"].startswith("message 1: a tool result with no tool call")
    assert "bad_video=1 (e.g. no_clip; first: video file " in report.describe()


def test_synthetic_answers_are_exactly_the_trained_labels(transform):
    ds = synthetic_vqa_dataset(transform, num_samples=12, seed=1)
    batches = list(DataLoader(ds, batch_size=6, num_workers=2, collate_fn=Qwen2_5_VLCollator()))
    rows = [row for b in batches for row in b["labels"].tolist()]
    for i in range(len(ds)):
        trained = [t for t in rows[i] if t != IGNORE_INDEX]
        assert transform.decode(trained) == ds[i]["answer"] + "<|im_end|>"
    assert sum(b["image_grid_thw"].shape[0] for b in batches) == sum(
        len(ds.source[i]["messages"][0]["content"]) - 1 for i in range(len(ds))
    )


def test_streaming_gives_the_map_style_samples(tmp_path, transform):
    write_photos(tmp_path, ["a.jpg"], size=(80, 60))
    path = write_jsonl(tmp_path / "d.jsonl", [llava(i, ["a.jpg"], f"<image> number {i}?") for i in range(6)])
    by_id = {s["id"]: s for s in streaming_chat_dataset(transform, data_files=str(path), seed=2, shuffle_buffer_size=4)}
    mapped = multimodal_chat_dataset(transform, source="jsonl", data_files=str(path))
    assert sorted(by_id) == [f"s{i}" for i in range(6)]
    for i in range(6):
        assert by_id[f"s{i}"]["tokens"] == mapped[i]["tokens"]
        assert torch.equal(by_id[f"s{i}"]["pixel_values"], mapped[i]["pixel_values"])


def test_sharegpt_video_as_frame_directory_gets_video_tokens(tmp_path, transform):
    from support.media import video_frames

    (tmp_path / "clip").mkdir()
    for t, frame in enumerate(video_frames(4, 96, 64)):
        frame.save(tmp_path / "clip" / f"frame_{t}.png")
    messages = [{"role": "user", "content": "<video>What happens?"}, {"role": "assistant", "content": "Motion."}]
    path = write_jsonl(tmp_path / "v.jsonl", [{"messages": messages, "videos": ["clip"]}])
    sample = multimodal_chat_dataset(transform, source="jsonl", data_files=str(path))[0]
    t, h, w = sample["video_grid_thw"][0].tolist()
    assert t == 2  # 4 frames, two per temporal patch
    assert sample["pixel_values_videos"].shape == (t * h * w, 1176)
    assert sample["tokens"].count(VIDEO_PAD_ID) == t * h * w // 4
    assert sample["second_per_grid_ts"].tolist() == [1.0]  # 2 frames per patch at the default 2 fps
