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


def streaming_config(data, path: str = "stream.yaml") -> str:
    """The fixture's config with the dataset streamed (buffer and seed as a run would set them)."""
    text = (data["dir"] / "run.yaml").read_text().replace("multimodal_chat_dataset", "streaming_chat_dataset")
    config = data["dir"] / path
    config.write_text(text + "  shuffle_buffer_size: 1000\n  seed: 3\n")
    return str(config)


def test_a_stream_is_read_once_and_reported_as_the_map_style_dataset_is(data):
    _, indexed = run(data)
    code, streamed = run({**data, "config": streaming_config(data)})
    assert code == 1
    named = lambda index: f"mixed.jsonl#{index}"  # noqa: E731  a stream names a record "<file>#<record number>"
    # a record without an id is named by its index, here the stream's name for it
    for entry in indexed["unusable_records"]:
        entry["index"], entry["id"] = named(entry["index"]), named(entry["id"]) if entry["id"] == entry["index"] \
            else entry["id"]
    indexed["unusable_by_cause"]["bad_conversation"]["examples"] = [named(5)]
    assert [{k: v for k, v in r.items() if k != "error"} for r in streamed.pop("unusable_records")] == [
        {k: v for k, v in r.items() if k != "error"} for r in indexed.pop("unusable_records")]
    assert streamed == indexed


def test_the_released_streaming_config_with_data_files(data, capsys):
    code = main(["--config", "configs/tiny_streaming.yaml", f"dataset.data_files={data['dir'] / 'mixed.jsonl'}",
                 "--num-workers", "1", "--no-progress"])
    assert code == 1
    out = capsys.readouterr().out
    assert "records: 7, usable: 4, unusable: 3" in out  # max_seq_len 256 there: the long record fits


def test_a_dead_worker_ends_the_command_with_exit_2_naming_it(data, monkeypatch, capsys):
    import os
    import signal

    from qwenvl_data.inspect import RecordInspector

    parent, inspect_one = os.getpid(), RecordInspector.__call__

    def killed_on_record_4(self, task):
        if os.getpid() != parent and task == 4:
            os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer ends a worker
        return inspect_one(self, task)

    monkeypatch.setattr(RecordInspector, "__call__", killed_on_record_4)
    signal.alarm(120)  # a hang fails the test instead of blocking the suite
    try:
        code = main(["--config", data["config"], "--num-workers", "2", "--no-progress"])
    finally:
        signal.alarm(0)
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "a worker process died while records 0..6 were in flight" in err
    assert "--num-workers 1" in err


@pytest.mark.parametrize("problem", ["bad_yaml", "not_a_mapping", "missing_config", "json_in_missing_dir",
                                     "json_is_a_directory"])
def test_config_and_json_path_faults_are_one_line_naming_the_file_before_any_work(data, capsys, problem):
    config, json_path = data["config"], str(data["dir"] / "report.json")
    if problem == "bad_yaml":
        config = data["dir"] / "bad.yaml"
        config.write_text("tokenizer:\n  max_seq_len: [96\ndataset: {}\n")
        expected = f"config {config} is not valid YAML:"
    elif problem == "not_a_mapping":
        config = data["dir"] / "list.yaml"
        config.write_text("- tokenizer\n")
        expected = f"config {config} must hold a mapping of settings, got list"
    elif problem == "missing_config":
        config = data["dir"] / "absent.yaml"
        expected = f"config {config}: No such file or directory"
    elif problem == "json_in_missing_dir":
        json_path = str(data["dir"] / "no_dir" / "report.json")
        expected = f"--json {json_path}: No such file or directory"
    else:
        json_path = str(data["dir"])
        expected = f"--json {json_path}: is a directory"
    code = main(["--config", str(config), "--json", json_path, "--num-workers", "1", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith(f"inspect: {expected}") and captured.err.count("\n") == 1
    assert captured.out == ""  # refused before any record was read
    assert not (data["dir"] / "report.json").exists()


def test_layouts_unread_fields_and_tool_turns_are_reported(data, capsys):
    call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    tools = [{"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    records = [
        {"id": "alpaca", "instruction": "Translate.", "input": "Bonjour", "output": "Hello"},
        {"id": "extra", "conversations": llava_turns("Hi", "Hello"), "instruction": "never read"},
        {"id": "llamafactory", "tools": json.dumps(tools),
         "conversations": [{"from": "human", "value": "Weather?"}, {"from": "function_call", "value": json.dumps(call)},
                           {"from": "observation", "value": "21"}, {"from": "gpt", "value": "21 degrees."}]},
        {"id": "ms_swift", "tools": json.dumps(tools),
         "messages": [{"role": "user", "content": "Weather?"}, {"role": "tool_call", "content": json.dumps(call)},
                      {"role": "tool_response", "content": "21"}, {"role": "assistant", "content": "21 degrees."}]},
        {"id": "openai_two_calls", "tools": tools,
         "messages": [{"role": "user", "content": "Paris and Rome?"},
                      {"role": "assistant", "content": None, "tool_calls": [
                          {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                          {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
                      {"role": "tool", "content": "21"}, {"role": "tool", "content": "25"},
                      {"role": "assistant", "content": [{"type": "text", "text": "21 and 25 degrees."}]}]},
    ]  # fmt: skip
    path = write_jsonl(data["dir"] / "layouts.jsonl", records)
    out_json = data["dir"] / "layouts.json"
    code = main(["--config", data["config"], f"dataset.data_files={path}", "tokenizer.max_seq_len=1024",
                 "--json", str(out_json), "--num-workers", "1", "--no-progress"])
    report = json.loads(out_json.read_text())
    assert code == 1 and report["unusable_by_cause"] == {"bad_conversation": {"count": 1, "examples": ["extra"]}}
    assert report["layouts"] == {"sharegpt": 3, "alpaca": 1, "openai": 1}
    assert report["unread_fields"] == {"instruction": 1}
    assert report["tool_turns"] == {"records": 3, "tool_calls": 4, "tool_results": 4}
    out = capsys.readouterr().out
    assert "by layout: sharegpt: 3, alpaca: 1, openai: 1" in out
    assert "refused for unread fields: instruction: 1" in out
    assert "tool turns: 3 records, 4 tool calls, 4 tool results" in out


def test_fields_left_out_as_metadata_are_listed_and_a_misspelled_one_refused(data, capsys):
    records = [
        {"id": "meta", "question": "Color?", "answer": "Blue.", "source": "vqa", "score": 0.9},
        {"id": "typo", "instruction": "And now?", "output": "Still blue.", "histroy": [["Color?", "Blue."]]},
    ]
    path = write_jsonl(data["dir"] / "metadata.jsonl", records)
    out_json = data["dir"] / "metadata.json"
    main(["--config", data["config"], f"dataset.data_files={path}", "--json", str(out_json), "--num-workers", "1",
          "--no-progress"])
    report = json.loads(out_json.read_text())
    assert report["metadata_fields"] == {"source": 1, "score": 1}
    assert report["unread_fields"] == {"histroy": 1}
    assert "did you mean 'history'?" in report["unusable_records"][0]["error"]
    assert "left out as metadata (no layout reads them): source: 1, score: 1" in capsys.readouterr().out
