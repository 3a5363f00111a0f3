"""Qwen2_5_VLTransform: token ids, labels and pixels against transformers' Qwen2.5-VL processing."""

import base64
import copy
import functools
import json

import numpy as np

import pytest
import torch
from support.media import image_in_mode, photo, video_frames
from support.text_reference import hf_tokenizer, image_tokens, reference_ids, video_tokens
from torchtune.data import Message
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from qwenvl_data._constants import (
    ENDOFTEXT_ID,
    IGNORE_INDEX,
    IM_END_ID,
    IMAGE_PAD_ID,
    PATCH_DIM,
    VIDEO_PAD_ID,
    VISION_END_ID,
    VISION_START_ID,
)
from qwenvl_data.errors import ImageLoadError, InvalidConversationError, PlaceholderMismatchError, SampleTooLongError
from qwenvl_data.transform import Qwen2_5_VLTransform

IMG_A, IMG_B, IMG_C = photo(64, 48, 1), photo(120, 200, 2), photo(300, 90, 3)
CLIP = video_frames(3, 96, 64, 4)  # odd frame count: the last frame is repeated to fill a temporal patch


def image(img) -> dict:
    return {"type": "image", "image": img}


def text(s: str) -> dict:
    return {"type": "text", "text": s}


CONVERSATIONS = {
    "text_only": [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
    ],
    "one_image": [
        {"role": "user", "content": [image(IMG_A), text("What is in the picture?")]},
        {"role": "assistant", "content": "Shapes and gradients."},
    ],
    "images_before_between_after_text": [
        {"role": "system", "content": "You describe images."},
        {"role": "user", "content": [image(IMG_A), text("compare"), image(IMG_B), text("with"), image(IMG_C)]},
        {"role": "assistant", "content": "The second is tallest."},
    ],
    "images_across_turns": [
        {"role": "user", "content": [text("First: "), image(IMG_B)]},
        {"role": "assistant", "content": "A tall one."},
        {"role": "user", "content": [image(IMG_C), image(IMG_A), text("And these?")]},
        {"role": "assistant", "content": [text("A wide one "), text("and a small one.")]},
    ],
    "video_and_image": [
        {"role": "user", "content": [{"type": "video", "video": CLIP, "fps": 2.0}, image(IMG_A), text("Same scene?")]},
        {"role": "assistant", "content": "No."},
    ],
    "unicode_code_whitespace": [
        {"role": "user", "content": [image(IMG_A), text("  日本語 😀👨‍👩‍👧\n\n\tdef f(x):\n        return x  \r\n")]},
        {"role": "assistant", "content": "\n\n```py\nprint('ünïcödé')\n```\n  \n"},
    ],
}


@pytest.fixture(scope="module")
def transform(vocab_files) -> Qwen2_5_VLTransform:
    return Qwen2_5_VLTransform(*vocab_files)


@pytest.fixture(scope="module")
def reference(vocab_files):
    return hf_tokenizer(*vocab_files)


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_tokens_match_transformers(transform, reference, chat_template, name):
    messages = CONVERSATIONS[name]
    out = transform({"messages": messages, "id": name})
    assert out["tokens"] == reference_ids(reference, chat_template, messages)


@functools.cache
def _checkpoint_transform_and_reference(model_dir):
    """(our transform, transformers' tokenizer), both read from the checkpoint directory."""
    from transformers import AutoTokenizer

    from qwenvl_data.training import checkpoint_transform

    return checkpoint_transform(model_dir), AutoTokenizer.from_pretrained(model_dir)


def _images_in_order(messages: list[dict]) -> list:
    return [part["image"] for m in messages if not isinstance(m["content"], str) for part in m["content"]
            if part.get("type") == "image"]  # fmt: skip


def _videos_in(messages: list[dict]) -> bool:
    return any(part.get("type") == "video" for m in messages if not isinstance(m["content"], str) for part in m["content"])


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_each_familys_checkpoint_gives_the_tokens_and_pixels_transformers_reads_from_it(family_checkpoint, name):
    """Text, image, images with a system turn, turns, video: the transform built from a family's released processor
    files against transformers reading the same directory (its tokenizer.json, chat template, image processor)."""
    messages = CONVERSATIONS[name]
    transform, tokenizer = _checkpoint_transform_and_reference(family_checkpoint)
    if transform.image_transform.video_rule.timestamps and _videos_in(messages):
        pytest.skip("Qwen3-VL's timestamped video text: tests/text/test_qwen3_vl_chat.py checks it against its rules")
    out = transform({"messages": messages, "id": name})
    template = json.loads((family_checkpoint / "chat_template.json").read_text())["chat_template"]
    processor = Qwen2VLImageProcessorPil.from_pretrained(family_checkpoint)
    assert out["tokens"] == reference_ids(tokenizer, template, messages, image_processor=processor)
    images = _images_in_order(messages)
    if images:
        expected = processor(images=images, return_tensors="pt")
        assert torch.equal(out["pixel_values"], expected["pixel_values"])
        assert torch.equal(out["image_grid_thw"], expected["image_grid_thw"])


@pytest.mark.parametrize("name", ["images_before_between_after_text", "images_across_turns", "video_and_image"])
def test_add_vision_id_matches_transformers(vocab_files, reference, chat_template, name):
    transform = Qwen2_5_VLTransform(*vocab_files, add_vision_id=True)
    messages = CONVERSATIONS[name]
    assert transform({"messages": messages})["tokens"] == reference_ids(
        reference, chat_template, messages, add_vision_id=True
    )


def test_inference_adds_the_generation_prompt_like_transformers(transform, reference, chat_template):
    messages = CONVERSATIONS["images_across_turns"][:3]
    out = transform({"messages": messages}, inference=True)
    assert out["tokens"] == reference_ids(reference, chat_template, messages, add_generation_prompt=True)


@pytest.mark.parametrize("name", ["one_image", "images_across_turns", "video_and_image", "text_only"])
def test_inference_prompt_leaves_out_the_final_answer_like_the_template_without_it(
    transform, reference, chat_template, name
):
    """A dataset record with its reference answer becomes the question it answers."""
    messages = CONVERSATIONS[name]
    out = transform({"messages": messages}, inference=True)
    assert out["tokens"] == reference_ids(reference, chat_template, messages[:-1], add_generation_prompt=True)
    assert out["tokens"][-3:] == transform.encode("<|im_start|>assistant\n", add_eos=False)
    without_answer = transform({"messages": messages[:-1]}, inference=True)
    assert out.keys() == without_answer.keys()
    assert out.pop("family") == without_answer.pop("family") == transform.family
    assert all(torch.equal(torch.as_tensor(out[k]), torch.as_tensor(without_answer[k])) for k in out)


def test_inference_prompt_of_the_text_tokenizer_leaves_out_the_final_answer(transform, reference, chat_template):
    messages = CONVERSATIONS["text_only"]
    tokens = transform.tokenizer({"messages": messages}, inference=True)["tokens"]
    assert tokens == reference_ids(reference, chat_template, messages[:-1], add_generation_prompt=True)
    # tokenize_messages keeps the template's own flag: the final answer is rendered, then a new turn opens.
    tokens, _ = transform.tokenize_messages(messages, add_generation_prompt=True)
    assert tokens == reference_ids(reference, chat_template, messages, add_generation_prompt=True)


def test_inference_prompt_needs_something_to_answer(transform):
    with pytest.raises(InvalidConversationError, match=r"sample \(lone\): nothing to answer"):
        transform({"messages": [{"role": "assistant", "content": "Hi"}], "id": "lone"}, inference=True)


def test_text_only_sample_has_no_pixel_keys_and_no_stray_eos(transform):
    out = transform({"messages": CONVERSATIONS["text_only"]})
    assert not any(key.startswith(("pixel_values", "image_grid", "video_grid", "second_per")) for key in out)
    assert ENDOFTEXT_ID not in out["tokens"]
    assert out["tokens"][-2:] == [IM_END_ID, transform.encode("\n", add_eos=False)[0]]


def test_pixels_and_grids_equal_transformers_image_processor_in_order(transform):
    out = transform({"messages": CONVERSATIONS["images_across_turns"]})
    expected = Qwen2VLImageProcessorPil()(images=[IMG_B, IMG_C, IMG_A], return_tensors="pt")
    assert torch.equal(out["image_grid_thw"], expected["image_grid_thw"])
    assert out["image_grid_thw"].dtype == torch.int64
    assert out["pixel_values"].shape == (int(expected["image_grid_thw"].prod(1).sum()), PATCH_DIM)
    assert torch.equal(out["pixel_values"], expected["pixel_values"].to(out["pixel_values"].dtype))


def test_each_vision_span_holds_its_own_image_tokens_in_order(transform):
    out = transform({"messages": CONVERSATIONS["images_across_turns"]})
    tokens = out["tokens"]
    starts = [i for i, t in enumerate(tokens) if t == VISION_START_ID]
    ends = [i for i, t in enumerate(tokens) if t == VISION_END_ID]
    span_lengths = [end - start - 1 for start, end in zip(starts, ends)]
    assert span_lengths == [image_tokens(IMG_B), image_tokens(IMG_C), image_tokens(IMG_A)]
    assert all(set(tokens[s + 1 : e]) == {IMAGE_PAD_ID} for s, e in zip(starts, ends))
    assert tokens.count(IMAGE_PAD_ID) * 4 == out["pixel_values"].shape[0]


def test_video_keys_follow_the_reference_rule(transform):
    out = transform({"messages": CONVERSATIONS["video_and_image"]})
    assert out["tokens"].count(VIDEO_PAD_ID) == video_tokens(CLIP)
    assert out["video_grid_thw"].shape == (1, 3) and out["video_grid_thw"][0, 0] == 2  # 3 frames -> 2 patches
    assert out["pixel_values_videos"].shape == (out["tokens"].count(VIDEO_PAD_ID) * 4, PATCH_DIM)
    assert out["second_per_grid_ts"].dtype == torch.float32
    assert out["second_per_grid_ts"].tolist() == [1.0]  # temporal_patch_size 2 / fps 2
    assert out["pixel_values"].shape[0] == out["tokens"].count(IMAGE_PAD_ID) * 4


def _trained_runs(out: dict) -> list[list[int]]:
    runs, run = [], []
    for label in out["labels"]:
        if label != IGNORE_INDEX:
            run.append(label)
        elif run:
            runs.append(run)
            run = []
    return runs + ([run] if run else [])


def test_labels_train_each_answer_and_its_im_end_only(transform):
    out = transform({"messages": CONVERSATIONS["images_across_turns"]})
    answers = [transform.decode(run) for run in _trained_runs(out)]
    assert answers == ["A tall one.<|im_end|>", "A wide one and a small one.<|im_end|>"]
    assert out["mask"] == [label == IGNORE_INDEX for label in out["labels"]]
    assert all(label in (IGNORE_INDEX, token) for label, token in zip(out["labels"], out["tokens"]))


def test_answer_starting_with_newlines_is_trained_from_its_first_own_token(transform):
    # "assistant\n" + "\n\n```" pre-tokenizes as one "\n\n\n" run that starts in the header: that token is
    # context, the answer's training starts right after it.
    out = transform({"messages": CONVERSATIONS["unicode_code_whitespace"]})
    (answer,) = _trained_runs(out)
    assert transform.decode(answer) == "```py\nprint('ünïcödé')\n```\n  \n<|im_end|>"


def test_image_in_an_answer_is_never_a_target(transform):
    messages = [
        {"role": "user", "content": "Draw a square."},
        {"role": "assistant", "content": [text("Here: "), image(IMG_A)]},
    ]
    out = transform({"messages": messages})
    trained = [label for label in out["labels"] if label != IGNORE_INDEX]
    assert IMAGE_PAD_ID not in trained
    assert transform.decode(trained) == "Here: <|vision_start|><|vision_end|><|im_end|>"


def test_train_on_input_trains_every_token_but_vision_pads(vocab_files):
    transform = Qwen2_5_VLTransform(*vocab_files, train_on_input=True)
    out = transform({"messages": CONVERSATIONS["one_image"]})
    expected = [IGNORE_INDEX if token == IMAGE_PAD_ID else token for token in out["tokens"]]
    assert out["labels"] == expected


@pytest.mark.parametrize("train_newline", [False, True])
def test_the_newline_after_each_answers_im_end_is_trained_only_when_asked(vocab_files, train_newline):
    """Qwen's fine-tuning code and LLaMA-Factory label each assistant turn as ``answer<|im_end|>\\n``."""
    transform = Qwen2_5_VLTransform(*vocab_files, train_newline_after_im_end=train_newline)
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
             {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye."}]  # fmt: skip
    out = transform({"messages": turns})
    trained = transform.decode([label for label in out["labels"] if label != IGNORE_INDEX])
    newline = "\n" if train_newline else ""
    assert trained == f"Hello.<|im_end|>{newline}Bye.<|im_end|>{newline}"
    assert out["tokens"] == Qwen2_5_VLTransform(*vocab_files)({"messages": turns})["tokens"]


def test_torchtune_messages_equal_the_dict_form(transform):
    messages = [
        Message(role="user", content=[{"type": "image", "content": IMG_A}, {"type": "text", "content": "compare"},
                                      {"type": "image", "content": IMG_B}]),
        Message(role="assistant", content="Different."),
    ]
    dicts = [{"role": "user", "content": [image(IMG_A), text("compare"), image(IMG_B)]},
             {"role": "assistant", "content": "Different."}]
    ours, theirs = transform({"messages": messages}), transform({"messages": dicts})
    assert ours["tokens"] == theirs["tokens"] and ours["labels"] == theirs["labels"]
    assert torch.equal(ours["pixel_values"], theirs["pixel_values"])


def test_image_placeholders_take_the_samples_images_in_order(transform):
    placeholders = [{"role": "user", "content": [{"type": "image"}, text("vs"), {"type": "image"}]},
                    {"role": "assistant", "content": "ok"}]
    inline = [{"role": "user", "content": [image(IMG_C), text("vs"), image(IMG_A)]},
              {"role": "assistant", "content": "ok"}]
    out = transform({"messages": placeholders, "images": [IMG_C, IMG_A]})
    assert out["tokens"] == transform({"messages": inline})["tokens"]
    assert "images" not in out and "messages" not in out


def test_image_sources_bytes_path_and_data_uri_give_the_same_sample(transform, tmp_path):
    path = tmp_path / "a.png"
    IMG_A.save(path)
    png = path.read_bytes()
    sources = [
        image(IMG_A),
        image(str(path)),
        image(png),
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}},
    ]
    outs = [transform({"messages": [{"role": "user", "content": [s]}]}) for s in sources]
    assert all(o["tokens"] == outs[0]["tokens"] for o in outs)
    assert all(torch.equal(o["pixel_values"], outs[0]["pixel_values"]) for o in outs)


def test_more_placeholders_than_images_is_an_error_naming_the_sample(transform):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, text("?")]}]
    with pytest.raises(PlaceholderMismatchError, match=r"sample \(s9\): 2 <image> placeholders, 1 images given"):
        transform({"messages": messages, "images": [IMG_A], "id": "s9"})


def test_inline_and_listed_images_together_are_an_error(transform):
    messages = [{"role": "user", "content": [image(IMG_A), {"type": "image"}]}]
    with pytest.raises(PlaceholderMismatchError, match=r"sample \(4\)"):
        transform({"messages": messages, "images": [IMG_B, IMG_C], "id": 4})


def test_literal_image_pad_in_text_is_an_error_not_a_silent_shift(transform):
    messages = [{"role": "user", "content": [image(IMG_A), text("a stray <|image_pad|> here")]}]
    with pytest.raises(PlaceholderMismatchError, match=r"sample \(x\): 2 <\|image_pad\|> tokens.*1 images"):
        transform({"messages": messages, "id": "x"})


def test_unreadable_image_raises_naming_the_sample_and_file(transform, tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ImageLoadError, match=r"sample \(12\).*nope.jpg"):
        transform({"messages": [{"role": "user", "content": [image(str(missing))]}], "id": 12})


def test_remote_image_url_is_refused(transform):
    part = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    with pytest.raises(ImageLoadError, match=r"sample \(r\).*remote"):
        transform({"messages": [{"role": "user", "content": [part]}], "id": "r"})


def test_unknown_role_and_empty_conversation_are_errors(transform):
    with pytest.raises(InvalidConversationError, match=r"sample \(1\).*unknown role 'bot'"):
        transform({"messages": [{"role": "bot", "content": "hi"}], "id": 1})
    with pytest.raises(InvalidConversationError, match=r"sample \(2\).*empty"):
        transform({"messages": [], "id": 2})


def test_too_long_sample_raises_with_its_length_by_default(vocab_files, transform):
    length = len(transform({"messages": CONVERSATIONS["one_image"]})["tokens"])
    short = Qwen2_5_VLTransform(*vocab_files, max_seq_len=length - 1)
    with pytest.raises(SampleTooLongError, match=rf"sample \(q\): {length} tokens > max_seq_len={length - 1}"):
        short({"messages": CONVERSATIONS["one_image"], "id": "q"})
    assert len(Qwen2_5_VLTransform(*vocab_files, max_seq_len=length)({"messages": CONVERSATIONS["one_image"]})[
        "tokens"]) == length


def test_truncate_text_cuts_only_text_after_the_last_vision_span(vocab_files, transform):
    full = transform({"messages": CONVERSATIONS["one_image"]})
    last_span_end = full["tokens"].index(VISION_END_ID)
    cut = Qwen2_5_VLTransform(*vocab_files, max_seq_len=last_span_end + 3, truncation="truncate_text")
    out = cut({"messages": CONVERSATIONS["one_image"]})
    assert out["tokens"] == full["tokens"][: last_span_end + 3]
    assert out["labels"] == full["labels"][: last_span_end + 3]
    assert torch.equal(out["pixel_values"], full["pixel_values"])


def test_truncate_text_refuses_to_cut_into_a_vision_span(vocab_files, transform):
    full = transform({"messages": CONVERSATIONS["one_image"]})
    inside_span = full["tokens"].index(VISION_END_ID)  # keeps the pads but not <|vision_end|>
    cut = Qwen2_5_VLTransform(*vocab_files, max_seq_len=inside_span, truncation="truncate_text")
    with pytest.raises(SampleTooLongError, match="image/video span"):
        cut({"messages": CONVERSATIONS["one_image"], "id": "v"})


def test_tokenize_messages_returns_expanded_tokens(transform):
    tokens, mask = transform.tokenize_messages(CONVERSATIONS["one_image"])
    out = transform({"messages": CONVERSATIONS["one_image"]})
    assert (tokens, mask) == (out["tokens"], out["mask"])


def test_image_kwargs_reach_the_image_transform(vocab_files):
    small = Qwen2_5_VLTransform(*vocab_files, max_pixels=28 * 28 * 4)
    out = small({"messages": [{"role": "user", "content": [image(IMG_B)]}]})
    assert out["image_grid_thw"].prod() <= 16 and out["tokens"].count(IMAGE_PAD_ID) <= 4



@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "CMYK", "I;16"])
def test_image_modes_give_transformers_token_counts(transform, reference, chat_template, mode):
    messages = [{"role": "user", "content": [image(image_in_mode(mode, 150, 70, 5)), text("mode?")]}]
    assert transform({"messages": messages})["tokens"] == reference_ids(reference, chat_template, messages)


def test_videos_keep_their_order_and_fps(transform):
    slow, fast = video_frames(4, 64, 64, 7), video_frames(2, 80, 48, 9)
    messages = [{"role": "user", "content": [{"type": "video", "video": slow, "fps": 2.0}, text("then"),
                                             {"type": "video", "video": fast, "fps": 4.0}]}]
    out = transform({"messages": messages})
    assert out["second_per_grid_ts"].tolist() == [1.0, 0.5]
    assert out["video_grid_thw"][:, 0].tolist() == [2, 1]
    starts = [i for i, t in enumerate(out["tokens"]) if t == VISION_START_ID]
    ends = [i for i, t in enumerate(out["tokens"]) if t == VISION_END_ID]
    assert [e - s - 1 for s, e in zip(starts, ends)] == [video_tokens(slow), video_tokens(fast)]


def test_video_as_uint8_tensor_equals_its_frames(transform):
    frames = video_frames(2, 64, 48, 11)
    tensor = torch.stack([torch.from_numpy(np.array(f)).permute(2, 0, 1) for f in frames])
    as_frames = transform({"messages": [{"role": "user", "content": [{"type": "video", "video": frames}]}]})
    as_tensor = transform({"messages": [{"role": "user", "content": [{"type": "video", "video": tensor}]}]})
    assert as_tensor["tokens"] == as_frames["tokens"]
    assert torch.equal(as_tensor["pixel_values_videos"], as_frames["pixel_values_videos"])


def test_the_input_sample_is_left_untouched(transform):
    """Map-style datasets may hand the same record to the transform every epoch."""
    messages = [{"role": "user", "content": [{"type": "image"}, text("?")]}, {"role": "assistant", "content": "x"}]
    sample = {"messages": messages, "images": [IMG_A], "id": 5}
    snapshot = copy.deepcopy(sample)
    first = transform(sample)
    assert sample.keys() == snapshot.keys() and sample["messages"] == snapshot["messages"]
    assert sample["images"] == [IMG_A] and transform(sample)["tokens"] == first["tokens"]
