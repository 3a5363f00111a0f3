"""python -m qwenvl_data.inspect on real files: exit status, the report's counts and every bad record by id."""

import json
import subprocess
import sys

import pytest
from support.datasets_records import llava_turns, write_jsonl, write_photos
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from qwenvl_data.inspect import main
from qwenvl_data.training import packaged_vocab_transform

MAX_SEQ_LEN = 96


def good_records() -> list:
    return [
        {"id": "g0", "image": "a.png", "conversations": llava_turns("<image>What is it?", "A photo.")},
        {"id": "g1", "messages": [{"role": "user", "content": [{"type": "image", "image": "b.png"},
                                                               {"type": "text", "text": "And this?"}]},
                                  {"role": "assistant", "content": "Another."}]},
        {"id": "g2", "conversations": llava_turns("No picture here.", "Fine.")},
    ]


def bad_records() -> list:
    return [
        {"id": "missing", "image": "nope.png", "conversations": llava_turns("<image>What?", "x")},
        {"id": "mismatch", "image": ["a.png", "b.png"], "conversations": llava_turns("<image>What?", "x")},
        '{"id": "broken", "conversations": [',
        {"id": "long", "conversations": llava_turns("word " * 200, "ok")},
    ]


@pytest.fixture
def data(tmp_path):
    write_photos(tmp_path, ["a.png", "b.png"], size=(150, 90))
    good = write_jsonl(tmp_path / "good.jsonl", good_records())
    mixed = write_jsonl(tmp_path / "mixed.jsonl", good_records() + bad_records())
    config = tmp_path / "run.yaml"
    config.write_text(
        "tokenizer:\n"
        "  _component_: qwenvl_data.training.packaged_vocab_transform\n"
        f"  max_seq_len: {MAX_SEQ_LEN}\n"
        "  max_pixels: 12544\n"
        "dataset:\n"
        "  _component_: qwenvl_data.datasets.multimodal_chat_dataset\n"
        "  source: jsonl\n"
        f"  data_files: {mixed}\n"
        "  on_error: skip\n"
    )
    return {"config": str(config), "good": str(good), "dir": tmp_path}


def run(data, *extra: str, workers: int = 2) -> tuple[int, dict]:
    out = data["dir"] / f"report_{workers}.json"
    code = main(["--config", data["config"], "--json", str(out), "--num-workers", str(workers), "--no-progress",
                 *extra])
    return code, json.loads(out.read_text())


def test_bad_records_exit_1_and_are_listed_by_id_and_cause(data):
    code, report = run(data)
    assert code == 1
    assert (report["records"], report["usable"], report["unusable"]) == (7, 3, 4)
    causes = {r["id"]: r["cause"] for r in report["unusable_records"]}
    assert causes == {"missing": "bad_image", "mismatch": "placeholder_mismatch", 5: "bad_conversation",
                      "long": "too_long"}
    broken = next(r for r in report["unusable_records"] if r["cause"] == "bad_conversation")
    assert "mixed.jsonl line 6" in broken["error"]
    assert report["unusable_by_cause"]["too_long"] == {"count": 1, "examples": ["long"]}
    assert report["layouts"] == {"sharegpt": 5, "openai": 1, "unknown": 1}


def test_token_lengths_are_measured_without_the_limit(data):
    _, report = run(data)
    unlimited = packaged_vocab_transform(max_pixels=12544)
    records = {r["id"]: r for r in good_records() + bad_records()[3:]}
    from qwenvl_data.datasets import multimodal_chat_dataset

    ds = multimodal_chat_dataset(unlimited, source="jsonl", data_files=data["good"])
    lengths = sorted([len(ds[i]["tokens"]) for i in range(3)])
    long = multimodal_chat_dataset(unlimited, source="jsonl",
                                   data_files=str(write_jsonl(data["dir"] / "long.jsonl", [records["long"]])))[0]
    assert len(long["tokens"]) > MAX_SEQ_LEN
    tokens = report["tokens"]
    assert tokens["max"] == len(long["tokens"]) and tokens["p50"] == lengths[-1]
    assert (tokens["max_seq_len"], tokens["over_max_seq_len"]) == (MAX_SEQ_LEN, 1)


def test_media_counts_and_sizes_before_and_after_smart_resize(data):
    _, report = run(data)
    assert report["images_per_sample"] == {"0": 1, "1": 2}
    assert report["videos_per_sample"] == {"0": 3}
    before, after = report["image_sizes"]["before_smart_resize"], report["image_sizes"]["after_smart_resize"]
    assert before["count"] == after["count"] == 2
    assert before["width"] == {"min": 150, "p50": 150, "max": 150}
    height, width = smart_resize(90, 150, factor=28, min_pixels=3136, max_pixels=12544)
    assert after["width"] == {"min": width, "p50": width, "max": width}
    assert after["height"] == {"min": height, "p50": height, "max": height}


def test_one_and_two_processes_give_the_same_report(data):
    assert run(data, workers=1) == run(data, workers=2)


def test_clean_dataset_exits_0_with_a_config_override(data):
    code, report = run(data, f"dataset.data_files={data['good']}")
    assert code == 0 and report["unusable"] == 0 and report["unusable_records"] == []


def test_command_line_prints_the_report(data):
    result = subprocess.run(
        [sys.executable, "-m", "qwenvl_data.inspect", "--config", data["config"], "--num-workers", "1",
         f"dataset.data_files={data['good']}"],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "records: 3, usable: 3, unusable: 0" in result.stdout
    assert "by layout: sharegpt: 2, openai: 1" in result.stdout


def test_a_config_that_cannot_be_built_exits_2(data, capsys):
    code = main(["--config", data["config"], f"dataset.data_files={data['dir'] / 'absent.jsonl'}", "--no-progress"])
    assert code == 2
    assert "absent.jsonl" in capsys.readouterr().err


def test_size_before_resize_is_what_the_transform_sees_after_exif_rotation(tmp_path):
    from PIL import Image, ImageOps

    from qwenvl_data.inspect import _image_size

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = tmp_path / "turned.jpg"
    Image.new("RGB", (120, 40), "red").save(path, exif=exif.tobytes())
    with Image.open(path) as image:
        assert _image_size(str(path)) == ImageOps.exif_transpose(image).size == (40, 120)
