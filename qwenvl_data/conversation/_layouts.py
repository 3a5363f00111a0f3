"""Record layouts -> torchtune ``Message``s, one message transform per layout (torchtune's convention).

Each layout only says which fields hold the turns; ``_messages.build_messages`` turns them, the record's media
and its system prompt into ``Message``s whose parts are ``{"type": "text"|"image"|"video", "content": ...}``,
image and video parts with their own options (``min_pixels``, ``max_pixels``, ``resized_height``,
``resized_width`` on an image; the ``VideoOptions`` keys on a video, over the dataset's ``video_options``), by the
one part parser ``_parts.parse_part``. A field or key counts only when its value is not None (or empty).

Layouts (``format`` names; detected per record from the fields that hold values, in this order):
- ``"sharegpt"`` (also ``"llava"``, ``"qwen_vl"``): text turns in ``conversations`` or ``messages``, each
  ``{"from": "human"|"gpt"|"system", "value"}`` or ``{"role", "content": str}``, with ``<image>`` /
  ``<video>`` placeholders. LLaVA / LLaVA-Instruct / ShareGPT4V, qwen-vl-finetune, LLaMA-Factory's
  ShareGPT (both variants), torchtune's ``llava_instruct_dataset``.
- ``"openai"``: ``messages`` whose content is a string or typed parts: ``{"type": "text", "text"}``,
  ``{"type": "image", "image"}``, ``{"type": "image_url", "image_url": {"url"}}``, ``{"type": "video",
  "video", ...options}``; parts without a payload take the record's media list in order (HF / TRL layout).
- ``"prompt_completion"`` (TRL): ``prompt`` and ``completion``, each a string or a list of messages.
- ``"cauldron"`` (HuggingFaceM4/the_cauldron, torchtune's ``the_cauldron_dataset``): ``texts`` of
  ``{"user", "assistant"}`` turns.
- ``"alpaca"`` (LLaMA-Factory): ``instruction``, optional ``input`` (prompt = instruction + "\\n" + input),
  ``output``, optional ``history`` (``[query, response]`` pairs, earlier turns) and ``system``.
- ``"input_output"`` (torchtune's ``vqa_dataset``, VQA-style hub sets): ``input`` (or ``question``) and
  ``output`` (or ``answer``) strings: one user turn, one assistant turn (none without an answer).

Shared by every layout: media from ``image`` / ``images`` and ``video`` / ``videos`` (a single value or a
list), a record-level system prompt from ``system`` / ``system_prompt`` (it replaces the default system
prompt; "" is an empty system turn), function schemas from ``tools`` (the system turn's tools block, see
``_tools``; tool turns in the three spellings of ``_messages.ROLES`` and OpenAI's ``tool_calls``), and
``column_map`` (``{expected: yours}``) for other field names. Media go where placeholders or payload-less parts
are, one each, in order; a conversation with neither gets all its media at the start of its first user message
(torchtune's and TRL's rule). A media, system or conversation field the layout
did not read is an error naming the field (any field some layout reads: ``KNOWN_FIELDS``; a misspelling of one,
``histroy``, too, with a did-you-mean; other fields are metadata, left out and listed by inspect), and so is a
message key nothing reads (``_messages.MESSAGE_KEYS``) and a message
other than a system message without content. LLaVA-Video's ``<image>`` for its video works: in a record with
videos and no images, ``<image>`` placeholders are the video's slots.
"""

from collections.abc import Mapping
from typing import Any

from torchtune.data import Message

from qwenvl_data.conversation._fields import RecordFields, check_column_map
from qwenvl_data.conversation._media import resolve_image, resolve_video
from qwenvl_data.conversation._messages import build_messages
from qwenvl_data.errors import InvalidConversationError

_RESOLVERS = {"image": resolve_image, "video": resolve_video}


def _turn_list(value: Any, field: str) -> list:
    """The turns of a conversation field: a list of dicts (``from``/``value`` or ``role``/``content``)."""
    if not isinstance(value, (list, tuple)):
        raise InvalidConversationError(f"'{field}' must be a list of messages, got {type(value).__name__}")
    if not all(isinstance(m, Mapping) for m in value):
        raise InvalidConversationError(f"every entry of '{field}' must be a dict")
    return list(value)


def _has_parts(turns: Any) -> bool:
    return isinstance(turns, (list, tuple)) and any(
        isinstance(m, Mapping) and isinstance(m.get("content"), (list, tuple)) for m in turns
    )


class ShareGPTToMessages:
    """Text turns with ``<image>``/``<video>`` placeholders in ``conversations`` or ``messages``."""

    name = "sharegpt"

    def matches(self, fields: RecordFields) -> bool:
        return "conversations" in fields or ("messages" in fields and not _has_parts(fields.values["messages"]))

    def turns(self, fields: RecordFields) -> list[dict]:
        held = "conversations" if "conversations" in fields else "messages"
        fields.one_of(("conversations", "messages"), "a conversation")
        turns = _turn_list(fields.get(held), held)
        if any(isinstance(t.get("content"), (list, tuple)) for t in turns):
            raise InvalidConversationError(f"'{held}' holds typed content parts: that is the 'openai' layout")
        return turns


class OpenAIToMessages:
    """OpenAI / HF chat ``messages``: string content or typed parts."""

    name = "openai"

    def matches(self, fields: RecordFields) -> bool:
        return "messages" in fields and _has_parts(fields.values["messages"])

    def turns(self, fields: RecordFields) -> list[dict]:
        return _turn_list(fields.get("messages"), "messages")


class PromptCompletionToMessages:
    """TRL's prompt-completion layout: ``prompt`` (user) and ``completion`` (assistant), strings or messages."""

    name = "prompt_completion"

    def matches(self, fields: RecordFields) -> bool:
        return "prompt" in fields and "completion" in fields

    def turns(self, fields: RecordFields) -> list[dict]:
        turns = []
        for field, role in (("prompt", "user"), ("completion", "assistant")):
            value = fields.get(field)
            turns += [{"role": role, "content": value}] if isinstance(value, str) else _turn_list(value, field)
        return turns


class CauldronToMessages:
    """the_cauldron's ``texts``: ``[{"user": question, "assistant": answer}, ...]``."""

    name = "cauldron"

    def matches(self, fields: RecordFields) -> bool:
        return "texts" in fields

    def turns(self, fields: RecordFields) -> list[dict]:
        texts = _turn_list(fields.get("texts"), "texts")
        return [{"role": role, "content": t.get(role)} for t in texts for role in ("user", "assistant")]


class AlpacaToMessages:
    """LLaMA-Factory's alpaca layout: the prompt is ``instruction`` + "\\n" + ``input`` (``instruction`` alone when
    ``input`` is empty), the answer ``output``; ``history`` pairs ``[query, response]`` are earlier turns."""

    name = "alpaca"

    def matches(self, fields: RecordFields) -> bool:
        return "instruction" in fields

    def turns(self, fields: RecordFields) -> list[dict]:
        history = fields.get("history") or []
        if not isinstance(history, (list, tuple)) or not all(
            isinstance(pair, (list, tuple)) and len(pair) == 2 for pair in history
        ):
            raise InvalidConversationError("'history' must be a list of [query, response] pairs")
        turns = [{"role": role, "content": text} for pair in history for role, text in zip(("user", "assistant"), pair)]
        prompt = "\n".join(text for text in (fields.get("instruction"), fields.get("input")) if text is not None)
        return [*turns, {"role": "user", "content": prompt}, {"role": "assistant", "content": fields.get("output")}]


class InputOutputToMessages:
    """One question and its answer: ``input`` / ``question`` and ``output`` / ``answer``. A question without an
    answer is one user turn: a prompt to generate's dataset, a record with no trained token to training's."""

    name = "input_output"

    def matches(self, fields: RecordFields) -> bool:
        return "input" in fields or "question" in fields

    def turns(self, fields: RecordFields) -> list[dict]:
        question = {"role": "user", "content": fields.one_of(("input", "question"), "the question")}
        answer = fields.one_of(("output", "answer"), "the answer")
        return [question] if answer is None else [question, {"role": "assistant", "content": answer}]


LAYOUTS = (
    ShareGPTToMessages(), OpenAIToMessages(), PromptCompletionToMessages(), CauldronToMessages(),
    AlpacaToMessages(), InputOutputToMessages(),
)
_BY_NAME = {layout.name: layout for layout in LAYOUTS} | {"llava": LAYOUTS[0], "qwen_vl": LAYOUTS[0]}
FORMATS = tuple(_BY_NAME)


def check_format(format: str | None) -> None:
    """Raise ValueError unless ``format`` is a layout name or None (detect)."""
    if format is not None and format not in _BY_NAME:
        raise ValueError(f"format must be one of {FORMATS} or None (detect per record), got {format!r}")


class RecordToMessages:
    """Message transform: one raw record -> ``{"messages": list[Message], "layout": name}``.

    Args:
        format: a name in ``FORMATS`` or None to detect the layout per record.
        column_map: ``{expected field: your field}`` renames applied before anything else.
        image_dir: directory media paths resolve under (anything outside is refused); a call's ``image_dir``
            (the record's own directory, from the dataset) replaces it for that record. None: paths as given.
        video_options: ``VideoOptions`` keys for every video part that does not set them itself.
        keep_fields: fields the caller copies into the sample (e.g. a reference ``answer``): read, not unread.

    Raises (on call):
        InvalidConversationError, PlaceholderMismatchError, ImageLoadError, UnsafePathError.
    """

    def __init__(
        self,
        format: str | None = None,
        column_map: Mapping[str, str] | None = None,
        *,
        image_dir: str | None,
        video_options: Mapping[str, Any] | None = None,
        keep_fields: tuple[str, ...] = (),
    ) -> None:
        check_format(format)
        self.keep_fields = tuple(keep_fields)
        self.layout = None if format is None else _BY_NAME[format]
        self.column_map = check_column_map(column_map)
        self.image_dir, self.video_options = image_dir, dict(video_options or {})

    def layout_of(self, record: Any) -> str | None:
        """The layout name ``record`` is read with (the chosen one, or detected), None when none matches."""
        if self.layout is not None:
            return self.layout.name
        if not isinstance(record, Mapping):
            return None
        try:
            return _detect(RecordFields(record, self.column_map)).name
        except InvalidConversationError:
            return None

    def metadata_of(self, record: Any) -> list[str]:
        """The fields of ``record`` that hold values and that no layout reads: left out, listed by inspect."""
        if not isinstance(record, Mapping):
            return []
        try:
            return RecordFields(record, self.column_map).metadata()
        except InvalidConversationError:
            return []

    def __call__(self, record: Any, image_dir: str | None = None) -> dict[str, Any]:
        image_dir = self.image_dir if image_dir is None else image_dir
        if not isinstance(record, Mapping):
            raise InvalidConversationError(f"record must be a JSON object, got {type(record).__name__}")
        fields = RecordFields(record, self.column_map)
        fields.read.update(self.keep_fields)
        layout = self.layout or _detect(fields)
        messages = build_messages(
            layout.turns(fields),
            images=fields.media("image"),
            videos=fields.media("video"),
            system=fields.system(),
            tools=fields.get("tools"),
            resolve=lambda kind, reference: _RESOLVERS[kind](reference, image_dir),
            video_defaults=self.video_options,
        )
        _check_contents(messages)
        first_user = next((message.text_content for message in messages if message.role == "user"), None)
        fields.check_all_read(layout.name, first_user)
        return {"messages": messages, "layout": layout.name}


def _check_contents(messages: list[Message]) -> None:
    """A record's message without content is a fault in the data (an empty system prompt is one's choice)."""
    for index, message in enumerate(messages):
        if not message.content and message.role != "system":
            raise InvalidConversationError(f"message {index} ({message.role}) has no content")


def _detect(fields: RecordFields) -> Any:
    layout = next((layout for layout in LAYOUTS if layout.matches(fields)), None)
    if layout is None:
        raise InvalidConversationError(
            f"no layout matches the fields that hold values {sorted(fields.values)}; expected one of "
            f"conversations, messages, prompt+completion, texts, instruction, input+output (rename yours with "
            "column_map)"
        )
    return layout


def detect_format(record: Mapping, column_map: Mapping[str, str] | None = None) -> str:
    """The layout name of one record, from the fields that hold values (see the module docstring)."""
    return _detect(RecordFields(record, check_column_map(column_map))).name


def to_conversation(
    record: Any,
    fmt: str | None,
    image_dir: str | None,
    video_options: Mapping[str, Any] | None = None,
    column_map: Mapping[str, str] | None = None,
) -> list[Message]:
    """One raw record -> its ``Message``s (``RecordToMessages`` in one call)."""
    return RecordToMessages(fmt, column_map, image_dir=image_dir, video_options=video_options)(record)["messages"]
