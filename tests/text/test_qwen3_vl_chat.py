"""Qwen3-VL's text: token ids identical to the official Qwen3-VL template (transformers' ``apply_chat_template``)
with the processor's expansion of images and videos, on the Qwen3 tokenizer (``<tool_response>`` and
``</tool_response>`` are tokens of their own there); labels train the assistant's turns (their tool calls
included) and nothing else, as for Qwen2.5-VL."""

import json

import pytest
from support.media import photo, video_frames
from support.qwen3_reference import QWEN3_TEMPLATE, qwen3_tokenizer_dir, reference_ids, video_grid

from qwenvl_data._constants import IGNORE_INDEX
from qwenvl_data.errors import InvalidConversationError
from qwenvl_data.transform import Qwen2_5_VLTransform

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.fixture(scope="module")
def transform() -> Qwen2_5_VLTransform:
    return Qwen2_5_VLTransform(str(qwen3_tokenizer_dir() / "tokenizer.json"), family="qwen3_vl")


def trained_text(transform, sample: dict) -> str:
    return transform.decode([label for label in sample["labels"] if label != IGNORE_INDEX])


def user(*parts) -> dict:
    return {"role": "user", "content": [p if isinstance(p, dict) else {"type": "text", "text": p} for p in parts]}


def image(seed: int, size=(300, 200)) -> dict:
    return {"type": "image", "image": photo(*size, seed=seed)}


CONVERSATIONS = {
    "text": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}],
    "image": [user(image(1), "What is this?"), {"role": "assistant", "content": "A photo."}],
    "multi_image": [user(image(2), "and", image(3, (97, 513)), "compare"), {"role": "assistant", "content": "Same."}],
    "system": [{"role": "system", "content": "Be brief."}, user(image(4), "Describe."),
               {"role": "assistant", "content": "Shapes."}],
    "empty_system": [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"},
                     {"role": "assistant", "content": "Hello."}],
    "multi_turn": [user(image(5), "First?"), {"role": "assistant", "content": "One."},
                   {"role": "user", "content": " Second?\n"}, {"role": "assistant", "content": "\nTwo."}],
}  # fmt: skip
# An answer's leading "\n" merges with the header's into one token, which stays context (it starts in the header).
ANSWERS = {"text": ["Hello!"], "image": ["A photo."], "multi_image": ["Same."], "system": ["Shapes."],
           "empty_system": ["Hello."], "multi_turn": ["One.", "Two."]}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_token_ids_equal_the_official_template_and_answers_are_trained(transform, name):
    messages = CONVERSATIONS[name]
    sample = transform({"messages": messages})
    assert sample["tokens"] == reference_ids(messages)
    assert trained_text(transform, sample) == "".join(f"{answer}<|im_end|>" for answer in ANSWERS[name])
    assert not transform.decode(sample["tokens"]).startswith("<|im_start|>system\nYou are")  # no default prompt


def test_a_generation_prompt_equals_the_template_with_add_generation_prompt(transform):
    messages = CONVERSATIONS["image"]
    prompt = transform({"messages": messages}, inference=True)
    assert prompt["tokens"] == reference_ids(messages[:1], add_generation_prompt=True)


@pytest.mark.parametrize("system", [None, "Be brief.", ""])
def test_tools_calls_and_results_equal_the_official_template(transform, system):
    turns = [user(image(6), "Weather here? It is Paris."),
             {"role": "assistant", "content": "", "tool_calls": [CALL, CALL]},
             {"role": "tool", "content": '{"temperature": 21}'}, {"role": "tool", "content": "sunny"},
             {"role": "assistant", "content": "Checking again.", "tool_calls": [CALL, CALL]},
             {"role": "tool", "content": "21"}, {"role": "assistant", "content": "21 degrees."}]  # fmt: skip
    messages = turns if system is None else [{"role": "system", "content": system}, *turns]
    sample = transform({"messages": messages, "tools": [WEATHER]})
    assert sample["tokens"] == reference_ids(messages, tools=[WEATHER])
    text = transform.decode(sample["tokens"])
    prompt = "" if system is None else f"{system}\n\n"
    assert text.startswith(f"<|im_start|>system\n{prompt}# Tools\n\nYou may call")
    # The calls are the assistant's and trained (joined to its text by "\n"); the results are user turns, not trained.
    calls = f"Checking again.\n{CALL_TEXT}\n{CALL_TEXT}"
    first = f"{CALL_TEXT}\n{CALL_TEXT}"  # two results follow: two calls (a result answers a call)
    assert trained_text(transform, sample) == f"{first}<|im_end|>{calls}<|im_end|>21 degrees.<|im_end|>"
    assert "<tool_response>" in transform.tokenizer.special_tokens  # one token in Qwen3's tokenizer


def test_tool_call_arguments_as_json_text_render_as_the_template_pastes_them(transform):
    as_text = {"type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}
    messages = [{"role": "user", "content": "Paris?"}, {"role": "assistant", "content": None, "tool_calls": [as_text]}]
    assert transform({"messages": messages, "tools": [WEATHER]})["tokens"] == reference_ids(messages, tools=[WEATHER])


@pytest.mark.parametrize("num_frames", [4, 5])
def test_a_video_is_written_with_a_timestamp_before_each_temporal_patch(transform, num_frames):
    frames = video_frames(num_frames, 64, 48, seed=num_frames)
    messages = [user({"type": "video", "video": frames, "fps": 2.0}, "What happens?"),
                {"role": "assistant", "content": "Nothing."}]  # fmt: skip
    sample = transform({"messages": messages})
    grid = video_grid(num_frames, 48, 64)
    assert sample["video_grid_thw"].tolist() == [grid]
    assert sample["tokens"] == reference_ids(messages, videos=[(grid, list(range(num_frames)), 2.0)])
    text = transform.decode(sample["tokens"])
    assert "<|vision_start|><0.2 seconds><|vision_start|>" not in text  # the template's span is replaced, not wrapped
    assert text.count("<|vision_start|>") == grid[0] and "<0.2 seconds><|vision_start|>" in text
    assert trained_text(transform, sample) == "Nothing.<|im_end|>"


def test_add_vision_id_numbers_images_and_videos(transform):
    frames = video_frames(2, 64, 64, seed=1)
    messages = [user(image(7), {"type": "video", "video": frames}, "Both?"), {"role": "assistant", "content": "Yes."}]
    sample = Qwen2_5_VLTransform(str(qwen3_tokenizer_dir() / "tokenizer.json"), family="qwen3_vl",
                                 add_vision_id=True)({"messages": messages})  # fmt: skip
    expected = reference_ids(messages, videos=[(video_grid(2, 64, 64), [0, 1], 2.0)], add_vision_id=True)
    assert sample["tokens"] == expected


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([{"role": "user", "content": "Hi"}, {"role": "system", "content": "Late."},
          {"role": "assistant", "content": "Hello."}], "system message after the first"),
        ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": [
            {"type": "image", "image": photo(64, 64)}, {"type": "text", "text": "This."}]}], "assistant message"),
    ],
    ids=["late_system", "image_in_answer"],
)  # fmt: skip
def test_what_the_template_would_drop_is_refused(transform, messages, match):
    with pytest.raises(InvalidConversationError, match=match):
        transform({"messages": messages})


def test_a_video_file_is_sampled_and_timestamped_as_transformers_does(tmp_path, transform):
    from support.media import write_video
    from support.qwen3_reference import sampled_indices

    path = write_video(tmp_path / "clip.mp4", 45, 64, 48, rate=15)
    messages = [user({"type": "video", "video": path}, "What happens?"), {"role": "assistant", "content": "Colours."}]
    sample = transform({"messages": messages})
    indices = sampled_indices(45, 15.0)  # 3 s at 2 fps: 6 frames of 45
    grid = video_grid(len(indices), 48, 64)
    assert sample["video_grid_thw"].tolist() == [grid]
    assert sample["tokens"] == reference_ids(messages, videos=[(grid, indices, 15.0)])


def test_transformers_5_wraps_the_timestamped_spans_in_the_templates_own_span_and_we_do_not(transform):
    """The documented departure: 5.24 replaces the <|video_pad|> alone (ProcessorMixin.get_text_with_replacements)."""
    from types import SimpleNamespace

    from support.qwen3_reference import hf_qwen3_tokenizer, video_text
    from transformers.processing_utils import ProcessorMixin

    frames = video_frames(2, 64, 64, seed=9)
    messages = [user({"type": "video", "video": frames}, "?"), {"role": "assistant", "content": "A."}]
    template_text = hf_qwen3_tokenizer().apply_chat_template(messages, chat_template=QWEN3_TEMPLATE, tokenize=False)
    spans = video_text(video_grid(2, 64, 64), [0, 1], 2.0)
    processor = SimpleNamespace(image_token="<|image_pad|>", video_token="<|video_pad|>", audio_token=None,
                                all_special_multimodal_tokens=["<|image_pad|>", "<|video_pad|>"])  # fmt: skip
    (by_5_24,), _ = ProcessorMixin.get_text_with_replacements(processor, [template_text], [], [spans])
    ours = transform.decode(transform({"messages": messages})["tokens"])
    assert by_5_24 == ours.replace(spans, f"<|vision_start|>{spans}<|vision_end|>")


def test_a_qwen3_transform_on_the_packaged_vocabulary_has_qwen3s_added_tokens(transform):
    """Built from vocab.json + merges.txt (no checkpoint), the family's own tokens are still one id each."""
    from qwenvl_data.vocab import qwen_vocab_files

    packaged = Qwen2_5_VLTransform(*qwen_vocab_files(), family="qwen3_vl")
    text = "<think>why</think> <tool_response>\n42\n</tool_response>"
    assert packaged.encode(text, add_bos=False, add_eos=False) == transform.encode(text, add_bos=False, add_eos=False)
    assert [packaged.special_tokens[t] for t in ("<tool_response>", "</tool_response>", "<think>", "</think>")] == [
        151665, 151666, 151667, 151668]  # fmt: skip
    assert packaged.decode(packaged.encode("<think>", add_bos=False, add_eos=False), skip_special_tokens=True) == "<think>"
