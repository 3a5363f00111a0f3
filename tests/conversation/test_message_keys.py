"""Keys on individual messages: per-message train flags decide whether an assistant turn trains (OpenAI fine-tuning's
``weight``, ms-swift's ``loss``, torchtune's ``masked``); any other key nothing reads is refused naming the sample,
the message and the key; a misspelled record field is refused with a did-you-mean; a tool result needs a call."""

import json

import pytest
from support.datasets_records import write_jsonl

from qwenvl_data._constants import IGNORE_INDEX
from qwenvl_data.conversation._layouts import to_conversation
from qwenvl_data.datasets import multimodal_chat_dataset
from qwenvl_data.errors import InvalidConversationError, UnreadFieldError
from qwenvl_data.transform import Qwen2_5_VLTransform

CALL = {"name": "get_weather", "arguments": {"city": "Rome"}}


@pytest.fixture(scope="module")
def transform(vocab_files):
    return Qwen2_5_VLTransform(*vocab_files)


def two_answers(flag: str, first, second) -> list[dict]:
    return [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Not this one.", flag: first},
            {"role": "user", "content": "Again"},
            {"role": "assistant", "content": "This one.", flag: second}]  # fmt: skip


@pytest.mark.parametrize("flag, off, on", [("weight", 0, 1), ("loss", False, True), ("masked", True, False)])
def test_a_per_message_train_flag_decides_whether_that_answer_trains(tmp_path, transform, flag, off, on):
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "flags", "messages": two_answers(flag, off, on)}])
    sample = multimodal_chat_dataset(transform, source="jsonl", data_files=str(path))[0]
    trained = transform.decode([label for label in sample["labels"] if label != IGNORE_INDEX])
    assert trained == "This one.<|im_end|>"
    assert "Not this one." in transform.decode(sample["tokens"])


@pytest.mark.parametrize("turn, match", [
    ({"role": "assistant", "content": "A", "weight": 0.5}, r"'weight' must be one of \[0, 1\], got 0.5"),
    ({"role": "assistant", "content": "A", "loss": "no"}, r"'loss' must be one of \[False, True\], got 'no'"),
    ({"role": "assistant", "content": "A", "weight": 1, "loss": False}, "train flags disagree"),
    ({"role": "user", "content": "Q", "loss": True}, "a user message is marked to train"),
])  # fmt: skip
def test_a_train_flag_that_cannot_be_honoured_is_refused(turn, match):
    turns = [turn] if turn["role"] == "assistant" else [turn, {"role": "assistant", "content": "A"}]
    turns = [{"role": "user", "content": "Q"}, *turns] if turn["role"] == "assistant" else turns
    with pytest.raises(InvalidConversationError, match=match):
        to_conversation({"messages": turns}, None, None)


@pytest.mark.parametrize("key, value", [("reasoning_content", "2 and 2 make 4"), ("images", ["a.png"]),
                                        ("vlaue", "4")])  # fmt: skip
def test_a_message_key_nothing_reads_is_an_error_naming_sample_message_and_key(tmp_path, transform, key, value):
    record = {"id": "extra_key", "messages": [{"role": "user", "content": "2+2?"},
                                              {"role": "assistant", "content": "4", key: value}]}  # fmt: skip
    path = write_jsonl(tmp_path / "d.jsonl", [record])
    dataset = multimodal_chat_dataset(transform, source="jsonl", data_files=str(path))
    with pytest.raises(UnreadFieldError, match=rf"sample 0 \(extra_key\).*message 1: key\(s\) \['{key}'\]") as caught:
        dataset[0]
    assert caught.value.fields == (f"message.{key}",)


def test_keys_the_chat_formats_carry_on_messages_are_accepted():
    turns = [{"role": "user", "content": "Rome?", "name": "alice"},
             {"role": "assistant", "content": None, "tool_calls": [
                 {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
             {"role": "tool", "content": "25", "tool_call_id": "call_1", "name": "get_weather"},
             {"role": "assistant", "content": "25 degrees.", "weight": 1}]  # fmt: skip
    messages = to_conversation({"messages": turns}, None, None)
    assert [m.role for m in messages] == ["user", "assistant", "tool", "assistant"]


def test_a_key_inside_a_llamafactory_call_that_is_not_rendered_is_refused():
    call = {**CALL, "id": "call_9", "thought": "I should call it"}
    turns = [{"from": "human", "value": "Rome?"}, {"from": "function_call", "value": json.dumps(call)},
             {"from": "observation", "value": "25"}, {"from": "gpt", "value": "25."}]  # fmt: skip
    expected = r"message 1: tool call 'get_weather' holds key\(s\) \['id', 'thought'\]"
    with pytest.raises(UnreadFieldError, match=expected):
        to_conversation({"conversations": turns}, None, None)


@pytest.mark.parametrize("turns, index", [
    ([{"from": "human", "value": "Hi"}, {"from": "observation", "value": "25"}, {"from": "gpt", "value": "ok"}], 1),
    ([{"role": "user", "content": "Rome?"}, {"role": "tool_call", "content": json.dumps(CALL)},
      {"role": "tool_response", "content": "25"}, {"role": "tool_response", "content": "99"},
      {"role": "assistant", "content": "25."}], 3),
])  # fmt: skip
def test_a_tool_result_without_a_call_to_answer_is_refused_naming_the_turn(turns, index):
    with pytest.raises(InvalidConversationError, match=f"message {index}: a tool result with no tool call"):
        to_conversation({"conversations": turns}, None, None)


def test_one_observation_may_answer_parallel_calls():
    turns = [{"from": "human", "value": "Rome and Oslo?"}, {"from": "function_call", "value": json.dumps([CALL, CALL])},
             {"from": "observation", "value": "[25, 3]"}, {"from": "gpt", "value": "25 and 3."}]  # fmt: skip
    assert [m.role for m in to_conversation({"conversations": turns}, None, None)] == [
        "user", "assistant", "tool", "assistant"]


@pytest.mark.parametrize("typo, known", [("histroy", "history"), ("sytem", "system"), ("imgaes", "images")])
def test_a_misspelled_field_is_refused_with_a_did_you_mean(typo, known):
    record = {"instruction": "And now?", "output": "Still blue.", typo: [["Color?", "Blue."]]}
    with pytest.raises(UnreadFieldError, match=f"'{typo}': did you mean '{known}'"):
        to_conversation(record, None, None)


def test_fields_named_after_a_known_one_stay_metadata():
    record = {"question": "Color?", "answer": "Blue.", "answers": ["blue", "navy"], "question_id": 7, "text": "x"}
    assert [m.text_content for m in to_conversation(record, None, None)] == ["Color?", "Blue."]
