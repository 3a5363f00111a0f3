"""Qwen2.5-VL tokenizer: Qwen's byte-level BPE in the Rust ``tokenizers`` library, torchtune's interface.

The Rust tokenizer gives the same ids as the released checkpoints' tokenizer (it is the same pipeline:
NFC, Qwen2's split regex, byte-level BPE) at native speed, and its character offsets let the chat
renderer's trained spans become a per-token loss mask without tokenizing turns separately (which would
change ids where a turn's text starts with whitespace).
"""

import importlib
from collections.abc import Mapping
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from torchtune.data import Message, PromptTemplate, PromptTemplateInterface
from torchtune.modules.transforms import Transform
from torchtune.modules.transforms.tokenizers import ModelTokenizer

from qwenvl_data.text._chat_template import ChatTemplate, RenderedChat, render_chat
from qwenvl_data._constants import (
    ENDOFTEXT_ID,
    FIRST_FAMILY_TOKEN_ID,
    IM_END_ID,
    IM_START_ID,
    NON_SPECIAL_ADDED_TOKENS,
    PAD_ID,
    SPECIAL_TOKENS,
)
from qwenvl_data._files import read_json
from qwenvl_data.conversation._messages import generation_prompt, normalise_conversation
from qwenvl_data.errors import sample_name
from qwenvl_data.text._truncation import check_truncation_policy, fit_max_seq_len

# Qwen2's pre-tokenizer split: contractions, letter runs with one leading non-letter, single digits,
# punctuation runs, newline runs and whitespace runs (a space before a word stays with the word).
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Ids the chat renderer and the model rely on; a tokenizer.json that moves them is the wrong tokenizer.
_REQUIRED_IDS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>")


def _added_tokens_from_json(tokenizer_json: str) -> list[tuple[str, int, bool]]:
    """``(content, id, special)`` of a ``tokenizer.json``'s added tokens."""
    added = read_json(tokenizer_json)["added_tokens"]
    return [(t["content"], t["id"], bool(t.get("special", True))) for t in added]


def _as_prompt_template(template: PromptTemplateInterface | str | Mapping | None) -> PromptTemplateInterface | None:
    """A template object from what a YAML config can hold: a class dotpath or a ``{role: [prepend, append]}`` map."""
    if isinstance(template, str):
        module, _, name = template.rpartition(".")
        return getattr(importlib.import_module(module), name)()
    if isinstance(template, Mapping):
        return PromptTemplate({role: tuple(tags) for role, tags in template.items()})
    return template


def _bpe_tokenizer(vocab_json: str, merges_txt: str, added_tokens: list[tuple[str, int, bool]]) -> Tokenizer:
    """Qwen2's byte-level BPE from ``vocab.json`` + ``merges.txt`` with ``added_tokens`` at their ids."""
    tokenizer = Tokenizer(BPE.from_file(vocab_json, merges_txt))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    # Added tokens take the next free id, so adding them in id order reproduces the released ids.
    for content, token_id, special in sorted(added_tokens, key=lambda t: t[1]):
        token = AddedToken(content, special=special, normalized=False)
        (tokenizer.add_special_tokens if special else tokenizer.add_tokens)([token])
        if tokenizer.token_to_id(content) != token_id:
            raise ValueError(
                f"{content!r} got id {tokenizer.token_to_id(content)}, expected {token_id}: {vocab_json} does "
                f"not hold the {token_id}-token base vocabulary these special tokens follow"
            )
    return tokenizer


class Qwen2_5_VLTokenizer(ModelTokenizer, Transform):  # noqa: N801 (the model's name)
    """Qwen2.5-VL's tokenizer with the official chat template, as a torchtune ``ModelTokenizer``.

    Args:
        path (str): ``vocab.json`` of the Qwen2/2.5 vocabulary, or a ``tokenizer.json`` when
            ``merges_file`` is None (its own added tokens are then used).
        merges_file (str | None): ``merges.txt``. Default None (``path`` is a tokenizer.json).
        special_tokens_path (str | None): a ``tokenizer.json`` whose ``added_tokens`` replace the built-in
            22 Qwen2.5-VL special tokens (ids 151643-151664). Default None.
        max_seq_len (int | None): longest sequence ``tokenize_messages`` returns. Default None.
        prompt_template (PromptTemplateInterface | str | dict | None): torchtune template applied to the
            messages before the chat template renders them: an object, the dotpath of a template class
            (``"torchtune.data.QuestionAnswerTemplate"``) or ``{role: [prepend, append]}``. Default None.
        truncation (str): "raise" (default) raises SampleTooLongError for a sequence over ``max_seq_len``;
            "truncate_text" cuts trailing text when no image/video span is touched (raises otherwise).
        chat_template (ChatTemplate): the family's official chat template (``ModelFamily.chat_template``);
            default Qwen2.5-VL's. Built from vocab.json + merges.txt without ``special_tokens_path``, the tokenizer
            also gets the template's ``added_tokens`` (Qwen3-VL's ``<tool_response>`` ... ``</think>``, ids from
            151665, not special), as the family's released tokenizer.json has them.

    Example:
        >>> from qwenvl_data.vocab import qwen_vocab_files
        >>> tokenizer = Qwen2_5_VLTokenizer(*qwen_vocab_files())
        >>> tokenizer.decode(tokenizer.encode("Hello world!", add_eos=False))
        'Hello world!'
    """

    def __init__(
        self,
        path: str,
        merges_file: str | None = None,
        special_tokens_path: str | None = None,
        max_seq_len: int | None = None,
        prompt_template: PromptTemplateInterface | str | Mapping | None = None,
        *,
        truncation: str = "raise",
        chat_template: ChatTemplate = ChatTemplate(),
    ) -> None:
        check_truncation_policy(truncation)
        self.chat_template = chat_template
        if merges_file is None:
            if special_tokens_path is not None:
                raise ValueError("special_tokens_path goes with vocab.json + merges.txt; a tokenizer.json has its own")
            self.tokenizer = Tokenizer.from_file(path)
            # A tokenizer.json may enable truncation or padding; lengths are this class's job (max_seq_len).
            self.tokenizer.no_truncation()
            self.tokenizer.no_padding()
        else:
            added = (
                _added_tokens_from_json(special_tokens_path)
                if special_tokens_path is not None
                else [(t, i, t not in NON_SPECIAL_ADDED_TOKENS) for t, i in SPECIAL_TOKENS.items()]
                + [(t, FIRST_FAMILY_TOKEN_ID + k, False) for k, t in enumerate(chat_template.added_tokens)]
            )
            self.tokenizer = _bpe_tokenizer(path, merges_file, added)
        self.special_tokens: dict[str, int] = {
            token.content: token_id for token_id, token in self.tokenizer.get_added_tokens_decoder().items()
        }
        for token in _REQUIRED_IDS:
            if self.special_tokens.get(token) != SPECIAL_TOKENS[token]:
                raise ValueError(
                    f"{path}: {token} has id {self.special_tokens.get(token)}, Qwen2.5-VL needs {SPECIAL_TOKENS[token]}"
                )
        self.max_seq_len = max_seq_len
        self.prompt_template = _as_prompt_template(prompt_template)
        self.truncation = truncation
        self.bos_id = None  # Qwen never prepends a BOS token
        self.eos_id = IM_END_ID  # the end of every turn, where chat generation stops
        self.pad_id = PAD_ID
        self.im_start_id = IM_START_ID
        self.im_end_id = IM_END_ID
        self.stop_tokens = [IM_END_ID, ENDOFTEXT_ID]

    @property
    def vocab_size(self) -> int:
        """Number of token ids the tokenizer can produce (base vocabulary + added tokens)."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        """Token ids of ``text``; special-token strings in it become their ids, as in the reference.

        Args:
            text: any string.
            add_bos: kept for torchtune's interface; Qwen has no BOS token, so nothing is added.
            add_eos: append ``eos_id`` (``<|im_end|>``), as torchtune's text-completion datasets expect.

        Returns:
            list[int] of token ids.
        """
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return ids + [self.eos_id] if add_eos else ids

    def decode(self, token_ids: list[int], skip_special_tokens: bool = False) -> str:
        """Text of ``token_ids``; ``skip_special_tokens`` drops the 14 special tokens (not ``<tool_call>`` etc.)."""
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def tokenize_rendered(self, chat: RenderedChat) -> tuple[list[int], list[bool]]:
        """Tokenize a rendered conversation in one call and mask every token outside its trained spans.

        A token is trained when its first character lies in a trained span: a token that starts in the
        role header and runs into the answer (``"\\n"`` + an answer starting with newlines) stays context.

        Returns:
            (tokens, mask): list[int] and list[bool] of equal length, mask True = not trained.
        """
        encoding = self.tokenizer.encode(chat.text, add_special_tokens=False)
        mask = [True] * len(encoding.ids)
        for start, end in chat.trained_spans:
            first = encoding.char_to_token(start)
            if encoding.token_to_chars(first)[0] < start:
                first += 1
            last = encoding.char_to_token(end - 1)
            mask[first : last + 1] = [False] * max(0, last + 1 - first)
        return encoding.ids, mask

    def render(self, messages: list[Message], **render_options: Any) -> RenderedChat:
        """Apply the prompt template (if any) and render with the official chat template (see ``render_chat``)."""
        if self.prompt_template is not None:
            messages = self.prompt_template(messages)
        return render_chat(messages, template=self.chat_template, **render_options)

    def tokenize_message(self, message: Message | Mapping[str, Any]) -> tuple[list[int], list[bool]]:
        """Tokens and mask of one message as one chat turn, ``<|im_start|>{role}\\n{content}<|im_end|>\\n``.

        No default system prompt: that belongs to a whole conversation (``tokenize_messages``). Text only.

        Args:
            message: a torchtune Message or an OpenAI/HF-style dict.

        Returns:
            (tokens, mask): list[int], list[bool] (True = not trained; an assistant turn trains its content
            and ``<|im_end|>``).
        """
        messages = self._text_only_conversation({"messages": [message]})
        return self.tokenize_rendered(self.render(messages, add_default_system=False))

    def tokenize_messages(
        self, messages: list[Message | Mapping[str, Any]], *, add_generation_prompt: bool = False
    ) -> tuple[list[int], list[bool]]:
        """Tokens and loss mask of a conversation rendered with the official Qwen2.5-VL chat template.

        Text only: images and videos need their grids to expand their tokens, use ``Qwen2_5_VLTransform``.

        Args:
            messages: torchtune Messages or OpenAI/HF-style dicts.
            add_generation_prompt: end with ``<|im_start|>assistant\\n`` for generation (the template's
                flag: a final assistant message is rendered too; ``__call__(inference=True)`` leaves it out).

        Returns:
            (tokens, mask): list[int], list[bool] (True = not trained), at most ``max_seq_len`` long.

        Raises:
            SampleTooLongError: over ``max_seq_len`` and the truncation policy cannot shorten it.
        """
        return self._tokenize_sample({"messages": messages}, add_generation_prompt)

    def __call__(self, sample: Mapping[str, Any], inference: bool = False) -> dict[str, Any]:
        """Text-only model transform: replace ``messages`` by ``tokens`` and ``mask`` (torchtune's convention).

        Args:
            sample: ``{"messages": [...], optional "id"}``.
            inference: a prompt for generation: a final assistant message (a record's reference
                answer) is left out and the tokens end with ``<|im_start|>assistant\\n``.

        Returns:
            the sample without ``messages``, with ``tokens`` list[int] and ``mask`` list[bool].
        """
        out = {k: v for k, v in sample.items() if k != "messages"}
        out["tokens"], out["mask"] = self._tokenize_sample(sample, inference, drop_final_answer=inference)
        return out

    def _text_only_conversation(self, sample: Mapping[str, Any]) -> list[Message]:
        name = sample_name(None, sample.get("id"))
        messages = normalise_conversation(sample, name)
        if any(part["type"] in ("image", "video") for m in messages for part in m.content):
            raise ValueError(f"{name}: has images or videos; use Qwen2_5_VLTransform, which expands their tokens")
        return messages

    def _tokenize_sample(
        self, sample: Mapping[str, Any], add_generation_prompt: bool, *, drop_final_answer: bool = False
    ) -> tuple[list[int], list[bool]]:
        messages = self._text_only_conversation(sample)
        name = sample_name(None, sample.get("id"))
        if drop_final_answer:
            messages = generation_prompt(messages, name)
        tokens, mask = self.tokenize_rendered(self.render(messages, add_generation_prompt=add_generation_prompt))
        return fit_max_seq_len(tokens, mask, self.max_seq_len, self.truncation, name)
