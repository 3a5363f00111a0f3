"""Record layouts as the fine-tuning tools and hub datasets write them, on real files: each loads to the tokens
and pixels of the equivalent OpenAI-form record (itself checked against transformers), the record's system
prompt reaches the tokens, mixed-layout files load every record, and fields no layout reads are refused."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from support.datasets_records import write_jsonl, write_photos
from support.image_reference import reference_image
from PIL import Image
from support.text_reference import hf_tokenizer, reference_ids

from qwenvl_data.datasets import multimodal_chat_dataset, streaming_chat_dataset
from qwenvl_data.conversation._layouts import detect_format, to_conversation
from qwenvl_data.errors import InvalidConversationError
from qwenvl_data.transform import Qwen2_5_VLTransform

Q, A = "What is shown?", "Two photos."


@pytest.fixture(scope="module")
def transform(vocab_files):
    return Qwen2_5_VLTransform(*vocab_files, max_pixels=56 * 56 * 4)


@pytest.fixture
def photos(tmp_path):
    write_photos(tmp_path, ["a.png", "b.jpg"], size=(90, 60))
    return tmp_path


def openai_record(images: list[str], system: str | None = None, question: str = Q) -> dict:
    """The OpenAI-form equivalent: images first in the user message, then the question."""
    content = [{"type": "image", "image": name} for name in images] + [{"type": "text", "text": question}]
    messages = [{"role": "user", "content": content}, {"role": "assistant", "content": A}]
    return {"messages": ([{"role": "system", "content": system}] if system else []) + messages}


def load(tmp_path, records: list, name: str = "d.jsonl", **kwargs):
    path = write_jsonl(tmp_path / name, records)
    return multimodal_chat_dataset(kwargs.pop("transform", None), source="jsonl", data_files=str(path), **kwargs)


def assert_same_sample(got: dict, expected: dict) -> None:
    assert got["tokens"] == expected["tokens"]
    assert got["labels"] == expected["labels"]
    assert torch.equal(got["pixel_values"], expected["pixel_values"])
    assert torch.equal(got["image_grid_thw"], expected["image_grid_thw"])


def test_llamafactory_sharegpt_conversations_with_images_loads_its_image(tmp_path, photos, transform, vocab_files,
                                                                         chat_template):
    record = {  # LLaMA-Factory's ShareGPT layout: `conversations` from/value plus an `images` list
        "conversations": [{"from": "human", "value": f"<image>{Q}"}, {"from": "gpt", "value": A}],
        "images": ["a.png"],
    }
    sample = load(tmp_path, [record], transform=transform)[0]
    image = Image.open(photos / "a.png").convert("RGB")
    hf_messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": Q}]},
                   {"role": "assistant", "content": A}]
    assert sample["tokens"] == reference_ids(hf_tokenizer(*vocab_files), chat_template, hf_messages)
    pixels, grid = reference_image(image, max_pixels=56 * 56 * 4)
    assert torch.equal(sample["pixel_values"], pixels) and torch.equal(sample["image_grid_thw"], grid)


@pytest.mark.parametrize("field", ["system", "system_prompt"])
def test_record_system_prompt_replaces_the_default_in_the_tokens(tmp_path, photos, transform, vocab_files,
                                                                 chat_template, field):
    record = {
        "conversations": [{"from": "human", "value": f"<image>{Q}"}, {"from": "gpt", "value": A}],
        "images": ["a.png"],
        field: "You describe photos in two words.",
    }
    sample = load(tmp_path, [record], transform=transform)[0]
    image = Image.open(photos / "a.png").convert("RGB")
    hf_messages = [{"role": "system", "content": "You describe photos in two words."},
                   {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": Q}]},
                   {"role": "assistant", "content": A}]
    assert sample["tokens"] == reference_ids(hf_tokenizer(*vocab_files), chat_template, hf_messages)
    text = transform.decode(sample["tokens"])
    assert "You describe photos in two words." in text and "You are a helpful assistant." not in text



# Each layout as its tool or hub dataset writes it, all meaning: system? + user(a.png, b.jpg, Q) + assistant(A).
LAYOUT_RECORDS = {
    "llava_instruct": (  # LLaVA-Instruct / ShareGPT4V / torchtune llava_instruct_dataset: one `image` string
        {"id": "x", "image": "a.png",
         "conversations": [{"from": "human", "value": f"<image>\n{Q}"}, {"from": "gpt", "value": A}]},
        openai_record(["a.png"], question=f"\n{Q}"),
    ),
    "qwen_vl_finetune": (  # qwen-vl-finetune: `image` is a list, one <image> per entry
        {"image": ["a.png", "b.jpg"],
         "conversations": [{"from": "human", "value": f"<image><image>{Q}"}, {"from": "gpt", "value": A}]},
        openai_record(["a.png", "b.jpg"]),
    ),
    "llamafactory_sharegpt_conversations": (
        {"conversations": [{"from": "human", "value": f"<image><image>{Q}"}, {"from": "gpt", "value": A}],
         "images": ["a.png", "b.jpg"], "system": "Be brief."},
        openai_record(["a.png", "b.jpg"], system="Be brief."),
    ),
    "llamafactory_sharegpt_messages": (
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": f"<image><image>{Q}"}, {"role": "assistant", "content": A}],
         "images": ["a.png", "b.jpg"]},
        openai_record(["a.png", "b.jpg"], system="Be brief."),
    ),
    "trl_messages_parts_and_images_column": (
        {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": Q}]},
                      {"role": "assistant", "content": [{"type": "text", "text": A}]}],
         "images": ["a.png", "b.jpg"]},
        openai_record(["a.png", "b.jpg"]),
    ),
    "trl_string_messages_and_images_column": (  # no placeholders: media go first in the first user message
        {"messages": [{"role": "user", "content": Q}, {"role": "assistant", "content": A}],
         "images": ["a.png", "b.jpg"]},
        openai_record(["a.png", "b.jpg"]),
    ),
    "trl_prompt_completion": (
        {"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": Q}]}],
         "completion": [{"role": "assistant", "content": A}], "images": ["a.png", "b.jpg"]},
        openai_record(["a.png", "b.jpg"]),
    ),
    "the_cauldron": (
        {"images": ["a.png", "b.jpg"], "texts": [{"user": Q, "assistant": A, "source": "vqav2"}]},
        openai_record(["a.png", "b.jpg"]),
    ),
    "torchtune_vqa_input_output": (
        {"input": Q, "output": A, "image": "a.png"},
        openai_record(["a.png"]),
    ),
    "hub_question_answer": (
        {"question": Q, "answer": A, "image": "a.png", "system_prompt": "Be brief."},
        openai_record(["a.png"], system="Be brief."),
    ),
}


@pytest.mark.parametrize("case", sorted(LAYOUT_RECORDS))
def test_each_layout_gives_the_tokens_and_pixels_of_the_openai_record(tmp_path, photos, transform, case):
    record, equivalent = LAYOUT_RECORDS[case]
    ds = load(tmp_path, [record, equivalent], transform=transform)
    assert_same_sample(ds[0], ds[1])


def test_column_map_renames_your_fields_to_the_expected_ones(tmp_path, photos, transform):
    record = {"dialog": [{"from": "human", "value": f"<image>{Q}"}, {"from": "gpt", "value": A}],
              "pictures": ["a.png"], "instructions": "Be brief."}
    column_map = {"conversations": "dialog", "images": "pictures", "system": "instructions"}
    renamed = load(tmp_path, [record], transform=transform, column_map=column_map)[0]
    plain = load(tmp_path, [openai_record(["a.png"], system="Be brief.")], name="o.jsonl", transform=transform)[0]
    assert_same_sample(renamed, plain)


def test_column_map_naming_a_field_no_layout_reads_is_refused(tmp_path):
    with pytest.raises(ValueError, match="'picture'"):
        load(tmp_path, [], column_map={"picture": "img"})


MIXED = [
    {"id": "llava", "image": "a.png", "conversations": [{"from": "human", "value": f"<image>{Q}"},
                                                        {"from": "gpt", "value": A}]},
    {"id": "openai", "messages": [{"role": "user", "content": [{"type": "image", "image": "b.jpg"},
                                                               {"type": "text", "text": Q}]},
                                  {"role": "assistant", "content": [{"type": "text", "text": A}]}]},
    {"id": "cauldron", "images": ["a.png", "b.jpg"], "texts": [{"user": Q, "assistant": A}]},
    {"id": "text", "conversations": [{"from": "human", "value": Q}, {"from": "gpt", "value": A}]},
]
MIXED_IMAGES = {"llava": ["a.png"], "openai": ["b.jpg"], "cauldron": ["a.png", "b.jpg"], "text": []}


def check_mixed(ds, photos) -> None:
    assert len(ds) == len(MIXED)
    for i, expected in enumerate(MIXED):
        sample = ds[i]
        assert sample["id"] == expected["id"]
        names = MIXED_IMAGES[expected["id"]]
        if names:
            grids = [reference_image(Image.open(photos / n).convert("RGB"), max_pixels=56 * 56 * 4)[1] for n in names]
            assert torch.equal(sample["image_grid_thw"], torch.cat(grids))
        else:
            assert "pixel_values" not in sample
        assert ds.stats["bad_conversation"] == 0


@pytest.mark.parametrize("source", ["json", "jsonl"])
def test_mixed_layout_json_array_loads_every_record_whatever_source_says(tmp_path, photos, transform, source):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(MIXED, indent=2))
    ds = multimodal_chat_dataset(transform, source=source, data_files=str(path), on_error="skip")
    check_mixed(ds, photos)


def test_mixed_layout_parquet_loads_every_record(tmp_path, photos, transform):
    # Arrow gives every row every column, absent ones None: detection must look at values, not keys.
    schema = pa.unify_schemas([pa.Table.from_pylist([record]).schema for record in MIXED])
    table = pa.Table.from_pylist(MIXED, schema=schema)
    assert table.num_columns == 6 and table.column("images").null_count == 3
    pq.write_table(table, tmp_path / "train.parquet")
    ds = multimodal_chat_dataset(transform, source="parquet", data_files=str(tmp_path / "train.parquet"),
                                 on_error="skip")
    check_mixed(ds, photos)


def test_streaming_dataset_reads_a_json_array_file(tmp_path, photos):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(MIXED))
    ds = streaming_chat_dataset(None, data_files=str(path), shuffle_buffer_size=1)
    assert [s["id"] for s in ds] == [r["id"] for r in MIXED]


def test_broken_jsonl_line_names_the_file_and_line(tmp_path):
    records = [MIXED[3], MIXED[3], '{"conversations": [', MIXED[3]]
    ds = load(tmp_path, records)
    with pytest.raises(InvalidConversationError, match=r"d\.jsonl line 3"):
        ds[2]


def test_broken_json_array_names_the_file_and_line(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('[\n {"id": 1},\n {"id": 2,,}\n]\n')
    with pytest.raises(ValueError, match=r"train\.json line 3"):
        multimodal_chat_dataset(None, source="json", data_files=str(path))


@pytest.mark.parametrize(
    ("record", "fmt", "field"),
    [
        ({"conversations": [{"from": "human", "value": Q}], "messages": [{"role": "user", "content": Q}]}, "openai",
         "conversations"),
        ({"texts": [{"user": Q, "assistant": A}], "messages": [{"role": "user", "content": Q}]}, "cauldron",
         "messages"),
        ({"texts": [{"user": Q, "assistant": A}], "conversations": [{"from": "human", "value": Q}]}, None, "texts"),
    ],
    ids=["conversations_under_openai", "messages_under_cauldron", "texts_beside_conversations_detected"],
)
def test_held_but_unread_field_is_an_error_naming_it(photos, record, fmt, field):
    with pytest.raises(InvalidConversationError, match=f"'{field}'"):
        to_conversation(record, fmt, str(photos))


@pytest.mark.parametrize(
    "record",
    [
        {"conversations": [{"from": "human", "value": f"<image>{Q}"}], "image": "a.png", "images": ["b.jpg"]},
        {"messages": [{"role": "user", "content": Q}], "system": "A.", "system_prompt": "B."},
    ],
    ids=["image_and_images", "system_and_system_prompt"],
)
def test_two_spellings_holding_values_are_refused_by_name(photos, record):
    first, second = [k for k in record if k not in ("conversations", "messages")]
    with pytest.raises(InvalidConversationError, match=f"'{first}', '{second}'"):
        to_conversation(record, None, str(photos))


def test_system_field_contradicting_the_system_message_is_refused(photos):
    record = {"messages": [{"role": "system", "content": "A."}, {"role": "user", "content": Q}], "system": "B."}
    with pytest.raises(InvalidConversationError, match="system"):
        to_conversation(record, None, str(photos))


def test_detection_ignores_keys_whose_value_is_none_or_empty():
    record = {"conversations": None, "image": None, "images": [], "messages": [{"role": "user", "content": Q}]}
    assert detect_format(record) == "sharegpt"
    record["messages"][0]["content"] = [{"type": "text", "text": Q}]
    assert detect_format(record) == "openai"


def test_video_part_options_pass_through_unchanged(tmp_path):
    write_photos(tmp_path / "clip", ["f1.png", "f2.png"])
    options = {"fps": 4.0, "nframes": 2, "min_frames": 2, "max_frames": 8, "video_start": 0.5, "video_end": 1.5,
               "min_pixels": 3136, "max_pixels": 12544, "total_pixels": 50176}
    record = {"messages": [{"role": "user", "content": [{"type": "video", "video": "clip", **options}]},
                           {"role": "assistant", "content": A}]}
    video = to_conversation(record, None, str(tmp_path))[0].content[0]
    assert {key: video[key] for key in options} == options
    assert len(video["content"]) == 2


def test_media_without_any_slot_go_first_also_before_typed_text_parts(photos):
    record = {"messages": [{"role": "user", "content": [{"type": "text", "text": Q}]},
                           {"role": "assistant", "content": A}], "images": ["a.png"]}
    image, text = to_conversation(record, None, str(photos))[0].content
    assert image["content"].endswith("a.png") and text == {"type": "text", "content": Q}


def test_json_data_files_by_split_read_the_split_asked_for(tmp_path):
    train = write_jsonl(tmp_path / "train.json", [MIXED[3]])
    test = tmp_path / "test.json"
    test.write_text(json.dumps([MIXED[3], MIXED[3]]))
    files = {"train": str(train), "test": str(test)}
    assert len(multimodal_chat_dataset(None, source="json", data_files=files, split="test")) == 2
    with pytest.raises(ValueError, match="no split 'validation'"):
        multimodal_chat_dataset(None, source="json", data_files=files, split="validation")


@pytest.mark.parametrize("name", ["train.json", "train.jsonl"])
def test_files_starting_with_a_utf8_bom_load_as_an_array_or_as_lines(tmp_path, name):
    """Windows editors (and encoding="utf-8-sig") put a byte-order mark before the first `[` or `{`."""
    records = [{"id": str(i), "conversations": [{"from": "human", "value": f"Q{i}"}, {"from": "gpt", "value": "A"}]}
               for i in range(3)]  # fmt: skip
    text = json.dumps(records, indent=1) if name.endswith(".json") else "\n".join(map(json.dumps, records))
    (tmp_path / name).write_text(text, encoding="utf-8-sig")
    dataset = multimodal_chat_dataset(None, source="jsonl", data_files=str(tmp_path / name))
    assert [dataset[i]["messages"][0].text_content for i in range(len(dataset))] == ["Q0", "Q1", "Q2"]


def test_a_placeholder_inside_a_typed_text_part_is_refused_not_trained_as_text(tmp_path):
    record = {"messages": [{"role": "user", "content": [{"type": "text", "text": "<image>What is it?"}]},
                           {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]}],
              "images": ["cat.png"]}  # fmt: skip
    with pytest.raises(Exception, match=r"text part holds a <image> placeholder"):
        to_conversation(record, None, str(tmp_path))
