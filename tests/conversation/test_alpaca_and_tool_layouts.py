"""LLaMA-Factory's alpaca layout and tool conversations in their three spellings, from .json, .jsonl and a saved
``datasets`` directory: token ids against the documented rule (the official templates where they render it),
which spans train, and media order; fields no layout reads here are refused in every layout."""

import json

import datasets
import pytest
import torch
from PIL import Image
from support.datasets_records import write_jsonl, write_photos
from support.image_reference import reference_image
from support.media import write_video
from support.text_reference import hf_tokenizer, reference_ids

from qwenvl_data._constants import IGNORE_INDEX
from qwenvl_data.conversation._layouts import to_conversation
from qwenvl_data.datasets import multimodal_chat_dataset
from qwenvl_data.errors import InvalidConversationError
from qwenvl_data.transform import Qwen2_5_VLTransform

from conftest import DATA_DIR

QWEN3_VL_TEMPLATE = (DATA_DIR / "qwen3_vl_chat_template.jinja").read_text()


@pytest.fixture(scope="module")
def transform(vocab_files):
    return Qwen2_5_VLTransform(*vocab_files)


@pytest.fixture(scope="module")
def reference(vocab_files):
    return hf_tokenizer(*vocab_files)


@pytest.fixture
def photos(tmp_path):
    write_photos(tmp_path, ["a.png", "b.png"], size=(90, 60))
    return tmp_path


def load_each_way(tmp_path, records: list[dict], transform, **kwargs) -> dict[str, list[dict]]:
    """The records read from .json, .jsonl and a saved ``datasets`` directory, transformed."""
    (tmp_path / "train.json").write_text(json.dumps(records))
    write_jsonl(tmp_path / "train.jsonl", records)
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "saved"))
    loaded = {}
    for name, source, files in (("json", "json", "train.json"), ("jsonl", "jsonl", "train.jsonl"),
                                ("saved", str(tmp_path / "saved"), None)):  # fmt: skip
        data_files = None if files is None else str(tmp_path / files)
        ds = multimodal_chat_dataset(transform, source=source, data_files=data_files, image_dir=str(tmp_path), **kwargs)
        loaded[name] = [ds[i] for i in range(len(ds))]
    return loaded


def trained_text(transform, sample: dict) -> str:
    return transform.decode([label for label in sample["labels"] if label != IGNORE_INDEX])


def photo(photos, name: str) -> Image.Image:
    return Image.open(photos / name).convert("RGB")


# alpaca: prompt = instruction + "\n" + input; history pairs are earlier turns; system is the system prompt.
ALPACA = {"instruction": "<image>Describe the picture.", "input": "In two words.", "output": "A cat.",
          "history": [["Hi", "Hello!"]], "system": "Be brief.", "images": ["a.png"]}  # fmt: skip


def test_alpaca_renders_history_then_instruction_and_input_and_trains_each_answer(
    tmp_path, photos, transform, reference, chat_template
):
    expected = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": [{"type": "image", "image": photo(photos, "a.png")},
                                     {"type": "text", "text": "Describe the picture.\nIn two words."}]},
        {"role": "assistant", "content": "A cat."},
    ]  # fmt: skip
    no_input = {key: value for key, value in ALPACA.items() if key not in ("input", "history")}
    loaded = load_each_way(tmp_path, [ALPACA, no_input], transform)
    pixels, grid = reference_image(photo(photos, "a.png"))
    for name, (sample, short) in loaded.items():
        assert sample["tokens"] == reference_ids(reference, chat_template, expected), name
        assert trained_text(transform, sample) == "Hello!<|im_end|>A cat.<|im_end|>", name
        assert torch.equal(sample["pixel_values"], pixels) and torch.equal(sample["image_grid_thw"], grid), name
        assert "<|im_start|>user\n<|vision_start|>" in transform.decode(short["tokens"])
        assert transform.decode(short["tokens"]).count("Describe the picture.<|im_end|>") == 1, name  # no "\n"


WEATHER = {"name": "get_weather", "description": "Current weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}
RESULT = '{"temperature": 21}'
QUESTION, ANSWER = "What is the weather where this was taken? It is Paris.", "It is 21 degrees."

# The same conversation as LLaMA-Factory (sharegpt), ms-swift and OpenAI/transformers write it.
TOOL_RECORDS = {
    "llamafactory_sharegpt": {
        "conversations": [{"from": "human", "value": f"<image>{QUESTION}"},
                          {"from": "function_call", "value": json.dumps(CALL)},
                          {"from": "observation", "value": RESULT}, {"from": "gpt", "value": ANSWER}],
        "tools": json.dumps([WEATHER]), "images": ["a.png"],
    },
    "ms_swift": {
        "messages": [{"role": "user", "content": f"<image>{QUESTION}"},
                     {"role": "tool_call", "content": json.dumps(CALL)},
                     {"role": "tool_response", "content": RESULT}, {"role": "assistant", "content": ANSWER}],
        "tools": json.dumps([{"type": "function", "function": WEATHER}]), "images": ["a.png"],
    },
    "openai": {  # typed content throughout, as a datasets table holds it; arguments as JSON text, as OpenAI sends
        "messages": [
            {"role": "user", "content": [{"type": "image", "image": "a.png"}, {"type": "text", "text": QUESTION}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": json.dumps(CALL["arguments"])}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": RESULT}]},
            {"role": "assistant", "content": [{"type": "text", "text": ANSWER}]},
        ],
        "tools": [{"type": "function", "function": WEATHER}],
    },
}  # fmt: skip


def hf_tool_conversation(image: Image.Image) -> list[dict]:
    """transformers' form; the system prompt is written out because Qwen3-VL's template has no default."""
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": QUESTION}]},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": CALL}]},
        {"role": "tool", "content": RESULT},
        {"role": "assistant", "content": ANSWER},
    ]


# The Qwen2.5 text model's tool format (its chat template's tools block), with Qwen2-VL's default system prompt.
TOOLS_SYSTEM = (
    "<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n\nYou may call one or more functions to assist "
    "with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    + json.dumps({"type": "function", "function": WEATHER})
    + "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call><|im_end|>\n"
)
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.mark.parametrize("spelling", sorted(TOOL_RECORDS))
def test_tool_conversations_render_the_qwen_tool_format_and_train_calls_not_results(
    tmp_path, photos, transform, reference, spelling
):
    image = photo(photos, "a.png")
    expected_ids = reference_ids(reference, QWEN3_VL_TEMPLATE, hf_tool_conversation(image),
                                 tools=[{"type": "function", "function": WEATHER}])  # fmt: skip
    expected_text = (
        TOOLS_SYSTEM + "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>" + QUESTION + "<|im_end|>\n"
        f"<|im_start|>assistant\n{CALL_TEXT}<|im_end|>\n"
        f"<|im_start|>user\n<tool_response>\n{RESULT}\n</tool_response><|im_end|>\n"
        f"<|im_start|>assistant\n{ANSWER}<|im_end|>\n"
    )
    pixels, grid = reference_image(image)
    for name, (sample,) in load_each_way(tmp_path, [TOOL_RECORDS[spelling]], transform).items():
        assert sample["tokens"] == expected_ids, name
        pads = int(grid.prod()) // 4
        assert transform.decode(sample["tokens"]).replace("<|image_pad|>" * pads, "<|image_pad|>") == expected_text
        assert trained_text(transform, sample) == f"{CALL_TEXT}<|im_end|>{ANSWER}<|im_end|>", name
        assert torch.equal(sample["pixel_values"], pixels), name


def test_several_calls_in_one_turn_and_their_results_in_one_user_turn(photos, transform, reference):
    second = {"name": "get_weather", "arguments": {"city": "Rome"}}
    record = {"messages": [
        {"role": "user", "content": "Paris and Rome?"}, {"role": "assistant", "content": "Checking both."},
        {"role": "tool_call", "content": json.dumps(CALL)}, {"role": "tool_call", "content": json.dumps(second)},
        {"role": "tool_response", "content": RESULT}, {"role": "tool_response", "content": '{"temperature": 25}'},
        {"role": "assistant", "content": "21 and 25."}], "tools": [WEATHER]}  # fmt: skip
    hf = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Paris and Rome?"},
          {"role": "assistant", "content": "Checking both.", "tool_calls": [{"function": CALL}, {"function": second}]},
          {"role": "tool", "content": RESULT}, {"role": "tool", "content": '{"temperature": 25}'},
          {"role": "assistant", "content": "21 and 25."}]  # fmt: skip
    path = write_jsonl(photos / "t.jsonl", [record])
    sample = multimodal_chat_dataset(transform, source="jsonl", data_files=str(path))[0]
    # a bare function schema is wrapped as {"type": "function", "function": ...} (LLaMA-Factory's rule)
    assert sample["tokens"] == reference_ids(reference, QWEN3_VL_TEMPLATE, hf,
                                             tools=[{"type": "function", "function": WEATHER}])  # fmt: skip
    calls = CALL_TEXT + "\n" + CALL_TEXT.replace("Paris", "Rome")
    assert trained_text(transform, sample) == f"Checking both.\n{calls}<|im_end|>21 and 25.<|im_end|>"


def test_tool_calls_handed_to_the_transform_directly_equal_the_record(photos, transform):
    record = multimodal_chat_dataset(transform, source="jsonl", data_files=str(
        write_jsonl(photos / "t.jsonl", [TOOL_RECORDS["openai"]])), image_dir=str(photos))[0]  # fmt: skip
    messages = json.loads(json.dumps(TOOL_RECORDS["openai"]["messages"]))
    messages[0]["content"][0]["image"] = str(photos / "a.png")
    direct = transform({"messages": messages, "tools": TOOL_RECORDS["openai"]["tools"]})
    assert direct["tokens"] == record["tokens"] and direct["labels"] == record["labels"]
    assert "tools" not in direct  # rendered into the tokens, not carried to the batch


@pytest.mark.parametrize(
    "record",
    [
        {"system": "", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]},
        {"messages": [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello."}]},  # fmt: skip
    ],
    ids=["system_field", "system_message"],
)
def test_an_explicitly_empty_system_prompt_is_an_empty_system_turn(photos, transform, reference, chat_template,
                                                                   record):  # fmt: skip
    sample = multimodal_chat_dataset(transform, source="jsonl", data_files=str(write_jsonl(photos / "e.jsonl",
                                                                                           [record])))[0]  # fmt: skip
    hf = [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"},
          {"role": "assistant", "content": "Hello."}]  # fmt: skip
    assert sample["tokens"] == reference_ids(reference, chat_template, hf)
    assert transform.decode(sample["tokens"]).startswith("<|im_start|>system\n<|im_end|>\n<|im_start|>user")


def test_llava_video_image_placeholder_for_the_video_equals_the_video_placeholder(tmp_path, transform):
    (tmp_path / "clip").mkdir()
    write_photos(tmp_path / "clip", ["f1.png", "f2.png"], size=(64, 56))
    def turns(tag: str) -> list[dict]:
        return [{"from": "human", "value": f"{tag}\nWhat happens?"}, {"from": "gpt", "value": "Nothing."}]

    llava_video = {"id": "v", "video": "clip", "conversations": turns("<image>"), "data_source": "academic"}
    written_out = {"id": "w", "video": "clip", "conversations": turns("<video>")}
    ds = multimodal_chat_dataset(transform, source="jsonl", data_files=str(
        write_jsonl(tmp_path / "v.jsonl", [llava_video, written_out])), image_dir=str(tmp_path))  # fmt: skip
    assert ds[0]["tokens"] == ds[1]["tokens"]
    assert torch.equal(ds[0]["pixel_values_videos"], ds[1]["pixel_values_videos"])
    assert "pixel_values" not in ds[0]


def test_llava_video_records_with_a_real_clip_read_alike_from_json_jsonl_and_a_saved_dataset(tmp_path, transform):
    """A LLaVA-Video record (an mp4, `<image>` written for it) from each container: the clip's frames are the
    video, in the place of the placeholder, as the `<video>` spelling renders them; only the answer trains."""
    write_video(tmp_path / "clip.mp4", 8, 56, 56, rate=4)

    def record(record_id: str, tag: str) -> dict:
        return {"id": record_id, "video": "clip.mp4", "data_source": "academic",
                "conversations": [{"from": "human", "value": f"Look.\n{tag}\nWhat happens?"},
                                  {"from": "gpt", "value": "The colour changes."}]}  # fmt: skip

    loaded = load_each_way(tmp_path, [record("v", "<image>"), record("w", "<video>")], transform)
    reference = loaded["jsonl"][1]
    pads = int(reference["video_grid_thw"].prod()) // 4
    assert pads > 0 and "pixel_values" not in reference
    assert transform.decode(reference["tokens"]).endswith(
        "<|im_start|>user\nLook.\n<|vision_start|>" + "<|video_pad|>" * pads
        + "<|vision_end|>\nWhat happens?<|im_end|>\n<|im_start|>assistant\nThe colour changes.<|im_end|>\n")  # fmt: skip
    for name, (image_tag, video_tag) in loaded.items():
        for sample in (image_tag, video_tag):
            assert sample["tokens"] == reference["tokens"] and sample["labels"] == reference["labels"], name
            assert torch.equal(sample["pixel_values_videos"], reference["pixel_values_videos"]), name
            assert trained_text(transform, sample) == "The colour changes.<|im_end|>", name


# Each layout forced, with a field some other layout reads: the record is refused naming the field.
UNREAD = {
    "sharegpt": ({"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}],
                  "instruction": "lost?"}, "instruction"),
    "openai": ({"messages": [{"role": "user", "content": [{"type": "text", "text": "Q"}]},
                             {"role": "assistant", "content": "A"}], "history": [["q", "a"]]}, "history"),
    "prompt_completion": ({"prompt": "Q", "completion": "A", "output": "B"}, "output"),
    "cauldron": ({"texts": [{"user": "Q", "assistant": "A"}], "answer": "B"}, "answer"),
    "alpaca": ({"instruction": "Q", "output": "A", "conversations": [{"from": "human", "value": "Q"}]},
               "conversations"),
    "input_output": ({"input": "Q", "output": "A", "history": [["q", "a"]]}, "history"),
}  # fmt: skip


@pytest.mark.parametrize("layout", sorted(UNREAD))
def test_a_field_the_layout_does_not_read_is_an_error_naming_it(photos, layout):
    record, field = UNREAD[layout]
    with pytest.raises(InvalidConversationError, match=f"'{field}'.*'{layout}' layout"):
        to_conversation(record, layout, str(photos))


def test_a_copy_of_the_first_turn_in_prompt_is_read_as_a_copy_and_anything_else_refused(photos):
    turns = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    assert to_conversation({"messages": turns, "prompt": "Q"}, None, str(photos))[0].text_content == "Q"
    with pytest.raises(InvalidConversationError, match="'prompt'"):
        to_conversation({"messages": turns, "prompt": "another question"}, "sharegpt", str(photos))


def test_column_map_never_lets_a_field_replace_another(photos):
    record = {"instruction": "Translate.", "input": "bonjour", "output": "hello"}
    with pytest.raises(InvalidConversationError, match="renames field 'instruction' to 'input', which the record"):
        to_conversation(record, None, str(photos), column_map={"input": "instruction"})
    assert to_conversation(record, None, str(photos))[0].text_content == "Translate.\nbonjour"


def test_placeholder_text_inside_a_tool_description_or_result_stays_text(photos, transform):
    tool = {**WEATHER, "description": "Weather of the city in an <image>"}
    record = {"messages": [{"role": "user", "content": "Paris?"}, {"role": "tool_call", "content": json.dumps(CALL)},
                           {"role": "tool_response", "content": [{"type": "text", "text": "sunny"}]},
                           {"role": "assistant", "content": "Sunny."}], "tools": [tool]}  # fmt: skip
    path = write_jsonl(photos / "d.jsonl", [record])
    sample = multimodal_chat_dataset(transform, source="jsonl", data_files=str(path))[0]
    assert "in an <image>" in transform.decode(sample["tokens"]) and "pixel_values" not in sample
