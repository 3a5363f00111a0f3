"""One data-file resolver for both dataset kinds: map-style and streaming (one reader, buffer of one) read the
same files as the same records in the same order, and refuse the same bad input with the same error."""

import io
import json
import os
import re
import tarfile

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.datasets_records import llava_turns, write_jsonl, write_photos

from qwenvl_data.datasets import (
    ChatDataset,
    JsonlSource,
    RecordProcessor,
    StreamingChatDataset,
    list_shards,
    multimodal_chat_dataset,
    streaming_chat_dataset,
)
from qwenvl_data.errors import DamagedShardError, InvalidConversationError


def record(i: int) -> dict:
    return {"id": f"l{i}", "image": f"img{i % 3}.png", "conversations": llava_turns(f"<image>\nPhoto {i}?", f"a{i}")}


def ids(start: int, stop: int) -> list[str]:
    return [f"l{i}" for i in range(start, stop)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Records l0.. in every file kind, with the images they name beside them."""
    root = tmp_path_factory.mktemp("corpus")
    write_photos(root, [f"img{i}.png" for i in range(3)])
    write_jsonl(root / "lines.jsonl", [record(i) for i in range(0, 4)])
    (root / "array.json").write_text(json.dumps([record(i) for i in range(4, 8)], indent=2))
    write_jsonl(root / "lines_in.json", [record(i) for i in range(8, 11)])  # a .json file holding JSON Lines
    pq.write_table(pa.Table.from_pylist([record(i) for i in range(11, 16)]), root / "rows.parquet", row_group_size=2)
    datasets.Dataset.from_list([record(i) for i in range(16, 21)]).save_to_disk(str(root / "saved"), num_shards=2)
    write_photos(root / "saved", [f"img{i}.png" for i in range(3)])
    write_photos(root / "parts", [f"img{i}.png" for i in range(3)])
    for part in (1, 0, 2):  # written out of order: the glob's matches are sorted
        write_jsonl(root / "parts" / f"part-{part}.jsonl", [record(21 + 2 * part), record(22 + 2 * part)])
    return root


def plain(sample: dict) -> dict:
    """A sample with its torchtune Messages as (role, content parts) pairs, so that two reads compare by value."""
    return {**sample, "messages": [(m.role, m.content) for m in sample["messages"]]}


def map_style(**options) -> list:
    dataset = multimodal_chat_dataset(None, **options)
    return [plain(dataset[i]) for i in range(len(dataset))]


def streamed(**options) -> list:
    return [plain(s) for s in streaming_chat_dataset(None, shuffle_buffer_size=1, rank=0, world_size=1, **options)]


CASES = {  # name -> (options with paths relative to the corpus, the ids read in order)
    "json_lines": (dict(source="jsonl", data_files="lines.jsonl"), ids(0, 4)),
    "json_array": (dict(source="json", data_files="array.json"), ids(4, 8)),
    "json_array_named_jsonl": (dict(source="jsonl", data_files="array.json"), ids(4, 8)),
    "lines_in_a_json_file": (dict(source="json", data_files="lines_in.json"), ids(8, 11)),
    "glob": (dict(source="jsonl", data_files="parts/part-*.jsonl"), ids(21, 27)),
    "list_of_kinds": (dict(source=None, data_files=["array.json", "rows.parquet", "lines.jsonl"]),
                      ids(4, 8) + ids(11, 16) + ids(0, 4)),  # fmt: skip
    "split_dict": (dict(source="jsonl", data_files={"train": "lines.jsonl", "test": "lines_in.json"}, split="test"),
                   ids(8, 11)),  # fmt: skip
    "parquet": (dict(source="parquet", data_files="rows.parquet"), ids(11, 16)),
    "saved_dataset": (dict(source="saved"), ids(16, 21)),
}


def in_corpus(corpus, options: dict) -> dict:
    def path(value):
        if isinstance(value, dict):
            return {split: path(files) for split, files in value.items()}
        return [path(v) for v in value] if isinstance(value, list) else str(corpus / value)

    options = dict(options)
    if options.get("data_files") is not None:
        options["data_files"] = path(options["data_files"])
    if options["source"] not in (None, "json", "jsonl", "parquet"):
        options["source"] = path(options["source"])
    return options


@pytest.mark.parametrize("case", CASES)
def test_both_dataset_kinds_read_the_same_records_in_the_same_order(corpus, case):
    options, expected_ids = CASES[case]
    options = in_corpus(corpus, options)
    samples = map_style(**options)
    assert [s["id"] for s in samples] == expected_ids
    assert streamed(**options) == samples
    image = samples[0]["messages"][0][1][0]["content"]  # under its data file's directory
    assert os.path.isfile(image) and os.path.basename(image) == f"img{int(samples[0]['id'][1:]) % 3}.png"


def raised(read, **options) -> BaseException:
    with pytest.raises(Exception) as caught:
        read(**options)
    return caught.value


@pytest.mark.parametrize(
    "options,error,message",
    [
        (dict(source="jsonl", data_files="missing.jsonl"), FileNotFoundError, "data file '{root}/missing.jsonl' does not exist"),
        (dict(source="jsonl", data_files="parts/*.parquet"), FileNotFoundError,
         "data_files pattern '{root}/parts/\\*.parquet' matches no file"),
        (dict(source="parquet", data_files="lines.jsonl"), ValueError, "does not look like source='parquet'"),
        (dict(source=None, data_files="img0.png"), ValueError, "cannot tell the format of '{root}/img0.png'"),
        (dict(source="jsonl", data_files={"train": "lines.jsonl"}, split="test"), ValueError, "no split 'test'"),
        (dict(source="jsonl"), ValueError, "data_files is not set"),
        (dict(source=None, data_files="parts"), FileNotFoundError,
         "data file '{root}/parts' is a directory, not a file: .* pass source='{root}/parts' without data_files"),
    ],
)  # fmt: skip
def test_bad_data_files_are_the_same_error_for_both_kinds(corpus, options, error, message):
    options = {**options, "data_files": options.get("data_files")}
    options = in_corpus(corpus, options)
    errors = [raised(map_style, **options), raised(streamed, **options)]
    assert all(type(e) is error for e in errors) and str(errors[0]) == str(errors[1])
    assert re.search(message.format(root=corpus), str(errors[0]))


def test_a_malformed_line_is_named_by_file_and_line_in_both_kinds(tmp_path):
    good = [{"id": i, "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}]} for i in "ac"]
    path = write_jsonl(tmp_path / "bad.jsonl", [good[0], "", '{"id": "b", ', good[1]])
    errors = [raised(map_style, source="jsonl", data_files=str(path)), raised(streamed, data_files=str(path))]
    assert [type(e) for e in errors] == [InvalidConversationError] * 2
    prefixes = ["sample 1 (id unknown): ", "sample bad.jsonl#1 (id unknown): "]
    assert [str(e)[: len(p)] for e, p in zip(errors, prefixes)] == prefixes
    details = [str(e)[len(p) :] for e, p in zip(errors, prefixes)]
    assert details[0] == details[1] and details[0].startswith(f"invalid JSON at {path} line 3 (")
    skipping = [multimodal_chat_dataset(None, source="jsonl", data_files=str(path), on_error="skip"),
                streaming_chat_dataset(None, data_files=str(path), on_error="skip", shuffle_buffer_size=1)]  # fmt: skip
    kept = [[skipping[0][i] for i in range(3)], list(skipping[1])]
    assert [[s["id"] for s in k if s is not None] for k in kept] == [["a", "c"], ["a", "c"]]
    examples = [d.processor.stats.examples() for d in skipping]
    assert examples[0] == examples[1] == {"bad_conversation": [f"{path} line 3"]}


def test_a_broken_json_array_is_the_same_error_for_both_kinds(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"id": "a"},\n  {"id": "b" "c"}\n]')
    errors = [raised(map_style, source="json", data_files=str(path)), raised(streamed, data_files=str(path))]
    # Map-style indexes the file when the dataset is built; a stream finds the fault when it reaches it, and
    # says so as a damaged shard (a counted skip under on_error=skip) whose cause is the same error.
    assert type(errors[0]) is ValueError and isinstance(errors[1], DamagedShardError)
    assert str(errors[0]).startswith(f"{path} line 3: invalid JSON in the array") and str(errors[0]) in str(errors[1])


def test_map_style_refuses_tar_shards_and_names_the_streaming_dataset(tmp_path):
    path = tmp_path / "shard.tar"
    with tarfile.open(path, "w") as tar:
        data = json.dumps(record(0)).encode()
        info = tarfile.TarInfo("000000.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match=r"shard\.tar: WebDataset tar shards .* use streaming_chat_dataset"):
        multimodal_chat_dataset(None, source="webdataset", data_files=str(path))
    assert [s["id"] for s in streamed(source="webdataset", data_files=str(path))] == ["l0"]


# The faults users met, each with the value it should have given.


def test_a_json_file_holding_lines_is_read_by_the_stream(corpus):
    """Was: "not a JSON file" from the stream while the map-style path read it."""
    for source in ("json", "jsonl", None):
        assert [s["id"] for s in streamed(source=source, data_files=str(corpus / "lines_in.json"))] == ids(8, 11)


def test_a_glob_in_data_files_is_expanded_by_the_map_style_path(corpus):
    """Was: FileNotFoundError for the pattern itself."""
    dataset = multimodal_chat_dataset(None, source="jsonl", data_files=str(corpus / "parts" / "part-*.jsonl"))
    assert [dataset[i]["id"] for i in range(len(dataset))] == ids(21, 27)


def test_saved_dataset_directories_are_told_by_one_rule(tmp_path):
    """A DatasetDict directory: both kinds read the split asked for, and name the splits there are."""
    splits = {"train": [record(i) for i in range(2)], "test": [record(i) for i in range(2, 5)]}
    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(str(tmp_path / "d"))
    write_photos(tmp_path / "d", [f"img{i}.png" for i in range(3)])
    for read in (map_style, streamed):
        assert [s["id"] for s in read(source=str(tmp_path / "d"), split="test")] == ids(2, 5)
    errors = [raised(read, source=str(tmp_path / "d"), split="validation") for read in (map_style, streamed)]
    assert str(errors[0]) == str(errors[1]) and "has splits ['train', 'test'], not 'validation'" in str(errors[0])


def test_a_directory_of_data_files_is_split_by_file_name_for_both_kinds(corpus, tmp_path):
    write_photos(tmp_path, [f"img{i}.png" for i in range(3)])
    write_jsonl(tmp_path / "train.jsonl", [record(i) for i in range(3)])
    (tmp_path / "test.json").write_text(json.dumps([record(i) for i in range(3, 5)]))
    for read in (map_style, streamed):
        assert [s["id"] for s in read(source=str(tmp_path))] == ids(0, 3)
        assert [s["id"] for s in read(source=str(tmp_path), split="test")] == ids(3, 5)


def test_dataset_classes_take_a_built_processor_that_the_builders_build_from_their_keywords(corpus):
    files = str(corpus / "lines.jsonl")
    processor = RecordProcessor(None, image_dir=corpus, format="sharegpt")
    by_hand = ChatDataset(JsonlSource(files), processor)
    stream = StreamingChatDataset(list_shards("jsonl", files), processor, shuffle_buffer_size=1)
    built = map_style(source="jsonl", data_files=files, format="sharegpt")
    assert [plain(by_hand[i]) for i in range(len(by_hand))] == [plain(s) for s in stream] == built
    with pytest.raises(TypeError, match="takes a RecordProcessor"):
        ChatDataset(JsonlSource(files), lambda sample: sample)
    with pytest.raises(ValueError, match="on_error must be one of"):
        RecordProcessor(None, on_error="ignore")


def pic_record(name: str, image: str = "pic.png") -> dict:
    return {"id": name, "image": image, "conversations": llava_turns("<image>\nWhat is it?", name)}


def image_of(sample: dict) -> str:
    return sample["messages"][0][1][0]["content"]


@pytest.fixture()
def folders(tmp_path):
    """Same-named data files in two folders, each record naming the ``pic.png`` beside its own file."""
    for folder in ("a", "b"):
        write_photos(tmp_path / folder, ["pic.png"])
        write_jsonl(tmp_path / folder / "part.jsonl", [pic_record(f"{folder}-jsonl")])
        pq.write_table(pa.Table.from_pylist([pic_record(f"{folder}-parquet")]), tmp_path / folder / "part.parquet")
    return tmp_path


@pytest.mark.parametrize(
    "data_files", [["a/part.jsonl", "b/part.jsonl"], "*/part.jsonl", ["a/part.parquet", "b/part.parquet"],
                   ["a/part.jsonl", "b/part.parquet", "a/part.parquet", "b/part.jsonl"]],
)  # fmt: skip
def test_each_record_resolves_media_under_its_own_data_files_directory_in_both_kinds(folders, data_files):
    options = in_corpus(folders, dict(source=None, data_files=data_files))
    for samples in (map_style(**options), streamed(**options)):
        assert len(samples) == (len(data_files) if isinstance(data_files, list) else 2)
        for sample in samples:
            folder = sample["id"].split("-")[0]
            assert image_of(sample) == str(folders / folder / "pic.png"), sample["id"]


def test_a_record_cannot_reach_another_data_files_folder_without_image_dir(folders):
    write_jsonl(folders / "b" / "up.jsonl", [pic_record("b-up", "../a/pic.png")])
    options = in_corpus(folders, dict(source="jsonl", data_files=["a/part.jsonl", "b/up.jsonl"]))
    for read in (map_style, streamed):
        assert f"outside image_dir {str(folders / 'b')!r}" in str(raised(read, **options))
    # an explicit image_dir holds every data file's media: paths resolve under it, as given
    write_jsonl(folders / "b" / "rooted.jsonl", [pic_record("b-rooted", "a/pic.png")])
    options = in_corpus(folders, dict(source="jsonl", data_files=["b/rooted.jsonl"]))
    for read in (map_style, streamed):
        assert image_of(read(**options, image_dir=str(folders))[0]) == str(folders / "a" / "pic.png")
