"""Qwen2_5_VLTokenizer against transformers' tokenizer built from the same real Qwen vocabulary."""

import json
import pickle
import unicodedata
from pathlib import Path

import pytest
from tokenizers import AddedToken
from torchtune.data import Message, PromptTemplate, QuestionAnswerTemplate
from transformers import PreTrainedTokenizerFast
from support.text_reference import hf_tokenizer, reference_ids

from qwenvl_data._constants import IM_END_ID, NON_SPECIAL_ADDED_TOKENS, SPECIAL_TOKENS
from qwenvl_data.errors import InvalidConversationError, SampleTooLongError
from qwenvl_data.tokenizer import Qwen2_5_VLTokenizer

TEXTS = {
    "ascii": "Hello world! The quick brown fox jumps over the lazy dog.",
    "whitespace_runs": "  leading\n\n\n\ttabs\t\t and   spaces   \r\n trailing   ",
    "cjk": "日本語のテキストと中文混合，한국어도 있습니다。",
    "emoji": "emoji 😀👍🏽 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵",
    "code": "def f(x: int) -> int:\n    return x ** 2  # square\n\n\nclass A:\n\tpass\n",
    "numbers": "12345 3.14159 1e-10 -42 0x1F 1,000,000",
    "contractions": "I'm sure they'LL say we've done what's RIGHT'S",
    "combining_accents": "Cafe\u0301 cafe\u0301 e\u0301le\u0300ve",  # NFC turns these into é, è
    "special_strings": "<|im_start|>user\nhi<|im_end|> <|image_pad|><tool_call>x</tool_call><|fim_pad|>",
    "partial_special": "<|im_start <|im_end|x <|image_pad",
    "control_and_rare": "\x00\x07 zero\u200bwidth \ufeffbom \U0001f9ea \u0627\u0644\u0639\u0631\u0628\u064a\u0629",
    "empty": "",
}


@pytest.fixture(scope="module")
def tokenizer(vocab_files) -> Qwen2_5_VLTokenizer:
    return Qwen2_5_VLTokenizer(*vocab_files)


@pytest.fixture(scope="module")
def reference(vocab_files):
    return hf_tokenizer(*vocab_files)


@pytest.mark.parametrize("text", TEXTS.values(), ids=TEXTS.keys())
def test_encode_matches_transformers(tokenizer, reference, text):
    assert tokenizer.encode(text, add_eos=False) == reference.encode(text, add_special_tokens=False)


def test_encode_appends_im_end_only_when_asked(tokenizer):
    plain = tokenizer.encode("Hello", add_eos=False)
    assert tokenizer.encode("Hello") == plain + [IM_END_ID]
    assert IM_END_ID not in plain


def test_every_special_token_is_one_token_at_its_released_id(tokenizer):
    for token, token_id in SPECIAL_TOKENS.items():
        assert tokenizer.encode(token, add_eos=False) == [token_id]
        assert tokenizer.special_tokens[token] == token_id
    assert tokenizer.vocab_size == max(SPECIAL_TOKENS.values()) + 1


def test_skip_special_tokens_keeps_the_non_special_added_tokens_like_transformers(tokenizer, reference):
    text = "".join(f"{token} x" for token in SPECIAL_TOKENS)
    ids = tokenizer.encode(text, add_eos=False)
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    assert decoded == reference.decode(ids, skip_special_tokens=True)
    assert all(token in decoded for token in NON_SPECIAL_ADDED_TOKENS)
    assert "<|im_start|>" not in decoded


@pytest.mark.parametrize("text", TEXTS.values(), ids=TEXTS.keys())
def test_decode_inverts_encode_up_to_nfc(tokenizer, reference, text):
    ids = tokenizer.encode(text, add_eos=False)
    assert tokenizer.decode(ids) == unicodedata.normalize("NFC", text) == reference.decode(ids)


@pytest.fixture(scope="module")
def qwen3_tokenizer_json(vocab_files) -> str:
    """The tokenizer.json shipped beside the vocabulary: Qwen2.5's BPE plus Qwen3's extra added tokens."""
    return str(Path(vocab_files[0]).parent / "tokenizer.json")


def test_loads_a_tokenizer_json_like_transformers(qwen3_tokenizer_json):
    ours = Qwen2_5_VLTokenizer(qwen3_tokenizer_json)
    reference = PreTrainedTokenizerFast(tokenizer_file=qwen3_tokenizer_json)
    for text in [*TEXTS.values(), "<think>reasoning</think>"]:
        assert ours.encode(text, add_eos=False) == reference.encode(text, add_special_tokens=False)
    assert ours.special_tokens["<think>"] == reference.convert_tokens_to_ids("<think>")


def test_special_tokens_path_replaces_the_builtin_added_tokens(vocab_files, qwen3_tokenizer_json):
    ours = Qwen2_5_VLTokenizer(*vocab_files, special_tokens_path=qwen3_tokenizer_json)
    reference = hf_tokenizer(*vocab_files)
    with open(qwen3_tokenizer_json, encoding="utf-8") as f:
        added = json.load(f)["added_tokens"]
    extra = [t for t in added if t["id"] > max(SPECIAL_TOKENS.values())]
    assert extra, "the fixture must add tokens beyond Qwen2.5-VL's"
    for token in extra:
        assert ours.encode(token["content"], add_eos=False) == [token["id"]]
    # Beyond the extra tokens, the tokenizer is the same as the built-in one.
    text = TEXTS["special_strings"] + TEXTS["code"]
    assert ours.encode(text, add_eos=False) == reference.encode(text, add_special_tokens=False)


def test_special_tokens_path_beside_a_tokenizer_json_is_refused(qwen3_tokenizer_json):
    with pytest.raises(ValueError, match="special_tokens_path"):
        Qwen2_5_VLTokenizer(qwen3_tokenizer_json, special_tokens_path=qwen3_tokenizer_json)


def test_pickled_tokenizer_gives_the_same_ids(tokenizer):
    """DataLoader workers started with spawn receive the tokenizer pickled."""
    clone = pickle.loads(pickle.dumps(tokenizer))
    assert clone.tokenize_messages(CONVERSATIONS["system_and_multi_turn"]) == tokenizer.tokenize_messages(
        CONVERSATIONS["system_and_multi_turn"]
    )


def test_tokenizer_json_with_moved_special_ids_is_refused(tmp_path, qwen3_tokenizer_json):
    with open(qwen3_tokenizer_json, encoding="utf-8") as f:
        config = json.load(f)
    image_pad = next(t for t in config["added_tokens"] if t["content"] == "<|image_pad|>")
    video_pad = next(t for t in config["added_tokens"] if t["content"] == "<|video_pad|>")
    image_pad["content"], video_pad["content"] = "<|video_pad|>", "<|image_pad|>"
    moved = tmp_path / "tokenizer.json"
    moved.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="image_pad"):
        Qwen2_5_VLTokenizer(str(moved))


CONVERSATIONS = {
    "single_turn": [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
    ],
    "system_and_multi_turn": [
        {"role": "system", "content": "Answer tersely.\n"},
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "7"},
        {"role": "user", "content": "Another, in 中文?"},
        {"role": "assistant", "content": [{"type": "text", "text": "五 "}, {"type": "text", "text": "(5) 😀"}]},
    ],
    "whitespace_edges": [
        {"role": "user", "content": "\n\n  indented\n"},
        {"role": "assistant", "content": "\n\n```python\nprint('x')\n```\n\n"},
    ],
    "system_after_the_first_turn": [
        {"role": "user", "content": "hi"},
        {"role": "system", "content": "Switch to French."},
        {"role": "assistant", "content": "Bonjour"},
    ],
    "empty_contents": [
        {"role": "user", "content": ""},
        {"role": "assistant", "content": []},
    ],
}


@pytest.mark.parametrize("messages", CONVERSATIONS.values(), ids=CONVERSATIONS.keys())
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_tokenize_messages_matches_the_official_chat_template(
    tokenizer, reference, chat_template, messages, generation_prompt
):
    tokens, mask = tokenizer.tokenize_messages(messages, add_generation_prompt=generation_prompt)
    expected = reference_ids(reference, chat_template, messages, add_generation_prompt=generation_prompt)
    assert tokens == expected
    assert len(mask) == len(tokens)


def test_mask_trains_exactly_each_answer_and_its_im_end(tokenizer):
    messages = CONVERSATIONS["system_and_multi_turn"]
    tokens, mask = tokenizer.tokenize_messages(messages)
    trained_runs, run = [], []
    for token, masked in zip(tokens, mask):
        if not masked:
            run.append(token)
        elif run:
            trained_runs.append(run)
            run = []
    assert not run, "the sequence ends with the untrained newline after <|im_end|>"
    assert [tokenizer.decode(r) for r in trained_runs] == ["7<|im_end|>", "五 (5) 😀<|im_end|>"]
    assert tokens[-1] == tokenizer.encode("\n", add_eos=False)[0] and mask[-1]


def test_torchtune_messages_give_the_same_tokens_as_dicts_and_keep_their_masked_flag(tokenizer):
    dicts = CONVERSATIONS["system_and_multi_turn"]
    messages = [Message(role=m["role"], content=m["content"] if isinstance(m["content"], str) else [
        {"type": "text", "content": p["text"]} for p in m["content"]]) for m in dicts]
    assert tokenizer.tokenize_messages(messages) == tokenizer.tokenize_messages(dicts)
    messages[2].masked = True  # the first answer, "7", is context only
    _, mask = tokenizer.tokenize_messages(messages)
    _, mask_dicts = tokenizer.tokenize_messages(dicts)
    assert sum(not m for m in mask) == sum(not m for m in mask_dicts) - 2  # "7" and its <|im_end|>
    dicts_masked = [dict(m, masked=True) if i == 2 else m for i, m in enumerate(dicts)]
    assert tokenizer.tokenize_messages(dicts_masked)[1] == mask


def test_prompt_template_wraps_contents_before_the_chat_template(vocab_files, reference, chat_template):
    template = PromptTemplate({"user": ("Question: ", "\nAnswer briefly.")})
    tokenizer = Qwen2_5_VLTokenizer(*vocab_files, prompt_template=template)
    messages = [Message(role="user", content="Why is the sky blue?"), Message(role="assistant", content="Rayleigh.")]
    wrapped = [
        {"role": "user", "content": "Question: Why is the sky blue?\nAnswer briefly."},
        {"role": "assistant", "content": "Rayleigh."},
    ]
    assert tokenizer.tokenize_messages(messages)[0] == reference_ids(reference, chat_template, wrapped)


@pytest.mark.parametrize(
    "template",
    [QuestionAnswerTemplate(), "torchtune.data.QuestionAnswerTemplate", {"user": ["Question: ", "\n\nAnswer: "]}],
    ids=["object", "dotpath", "mapping"],
)
def test_prompt_template_accepts_what_a_yaml_config_holds(vocab_files, reference, chat_template, template):
    tokenizer = Qwen2_5_VLTokenizer(*vocab_files, prompt_template=template)
    messages = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    wrapped = [{"role": "user", "content": "Question: 2+2?\n\nAnswer: "}, messages[1]]
    assert tokenizer.tokenize_messages(messages)[0] == reference_ids(reference, chat_template, wrapped)


def test_call_replaces_messages_by_tokens_and_mask(tokenizer):
    out = tokenizer({"messages": CONVERSATIONS["single_turn"], "id": "s1"})
    assert "messages" not in out and out["id"] == "s1"
    assert (out["tokens"], out["mask"]) == tokenizer.tokenize_messages(CONVERSATIONS["single_turn"])


def test_too_long_conversation_raises_with_its_length(vocab_files):
    tokenizer = Qwen2_5_VLTokenizer(*vocab_files, max_seq_len=10)
    with pytest.raises(SampleTooLongError, match=r"sample \(7\): \d+ tokens > max_seq_len=10"):
        tokenizer({"messages": CONVERSATIONS["single_turn"], "id": 7})


def test_truncate_text_cuts_text_only_conversations_to_max_seq_len(vocab_files, tokenizer):
    full, full_mask = tokenizer.tokenize_messages(CONVERSATIONS["system_and_multi_turn"])
    short = Qwen2_5_VLTokenizer(*vocab_files, max_seq_len=20, truncation="truncate_text")
    assert short.tokenize_messages(CONVERSATIONS["system_and_multi_turn"]) == (full[:20], full_mask[:20])


def test_unknown_truncation_policy_is_refused_at_construction(vocab_files):
    with pytest.raises(ValueError, match="truncation"):
        Qwen2_5_VLTokenizer(*vocab_files, truncation="drop_middle")


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ([], "empty"),
        ([{"role": "robot", "content": "beep"}], "unknown role 'robot'"),
        ([{"role": "user", "content": None}], "message 0: the message has no content"),
        ([{"role": "user", "content": [{"type": "audio", "audio": b""}]}], "unknown content part type 'audio'"),
    ],
)
def test_bad_conversations_raise_naming_the_sample(tokenizer, messages, problem):
    with pytest.raises(InvalidConversationError, match=f"sample \\(abc\\).*{problem}"):
        tokenizer({"messages": messages, "id": "abc"})


def test_images_are_refused_by_the_text_only_tokenizer(tokenizer):
    from support.media import photo

    sample = {"id": 3, "messages": [{"role": "user", "content": [{"type": "image", "image": photo(32, 32, 0)}]}]}
    with pytest.raises(ValueError, match=r"sample \(3\).*Qwen2_5_VLTransform"):
        tokenizer(sample)


def test_added_token_flags_match_the_released_tokenizer_config(vocab_files, qwen3_tokenizer_json):
    """The released added tokens are special up to <|video_pad|>, plain from <tool_call> on."""
    with open(qwen3_tokenizer_json, encoding="utf-8") as f:
        released = {t["content"]: t["special"] for t in json.load(f)["added_tokens"]}
    ours = Qwen2_5_VLTokenizer(*vocab_files).tokenizer.get_added_tokens_decoder()
    assert {t.content: t.special for t in ours.values()} == {t: released[t] for t in SPECIAL_TOKENS}
    assert all(isinstance(t, AddedToken) and not t.normalized for t in ours.values())


@pytest.mark.parametrize(
    "message",
    [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "  Four.\n\nBecause 2 + 2 = 4. 😀"},
        {"role": "system", "content": [{"type": "text", "text": "Be terse."}]},
    ],
    ids=["user", "assistant", "system"],
)
def test_tokenize_message_is_that_message_turn_of_the_official_template(
    tokenizer, reference, chat_template, message
):
    # The template renders a turn only inside a conversation: render [system, message] and drop the system turn.
    system = {"role": "system", "content": "S"}
    both = reference_ids(reference, chat_template, [system, message])
    system_only = reference_ids(reference, chat_template, [system])
    tokens, mask = tokenizer.tokenize_message(message)
    assert tokens == both[len(system_only):]
    trained = [t for t, masked in zip(tokens, mask) if not masked]
    if message["role"] == "assistant":
        assert tokenizer.decode(trained) == message["content"] + "<|im_end|>"
    else:
        assert trained == []


def test_tokenize_messages_of_a_conversation_with_a_system_turn_is_its_turns_concatenated(tokenizer):
    conversation = [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris"},
    ]
    turns = [tokenizer.tokenize_message(m) for m in conversation]
    assert tokenizer.tokenize_messages(conversation) == (
        [t for tokens, _ in turns for t in tokens],
        [m for _, mask in turns for m in mask],
    )
