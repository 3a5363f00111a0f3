"""Record layouts -> the internal conversation form the model transform takes, one message transform per layout.

Internal form: ``[{"role": "system"|"user"|"assistant", "content": str | [part, ...]}]`` with parts
``{"type": "text", "text": str}``, ``{"type": "image", "image": PIL | bytes | path}`` and
``{"type": "video", "video": frames | file path, **VideoOptions keys}`` (the record part's ``fps``, ``nframes``,
``min_frames``, ``max_frames``, ``video_start``, ``video_end``, ``min_pixels``, ``max_pixels``, ``total_pixels``
over the dataset's ``video_options``). A message without media keeps a plain string.

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
- ``"input_output"`` (torchtune's ``vqa_dataset``, VQA-style hub sets): ``input`` (or ``question``) and
  ``output`` (or ``answer``) strings: one user turn, one assistant turn.

Shared by every layout: media from ``image`` / ``images`` and ``video`` / ``videos`` (a single value or a
list), a record-level system prompt from ``system`` / ``system_prompt`` (it replaces the default system
prompt), and ``column_map`` (``{expected: yours}``) for other field names. Media go where placeholders or
payload-less parts are, one each, in order; a conversation with neither gets all its media at the start
of its first user message (torchtune's and TRL's rule). A media, system or conversation field the layout
did not read is an error naming the field.
"""

import re
from collections.abc import Mapping
from typing import Any

from qwenvl_data.conversation._fields import RecordFields, check_column_map
from qwenvl_data.conversation._media import resolve_image, resolve_video
from qwenvl_data.errors import InvalidConversationError, PlaceholderMismatchError
from qwenvl_data.video import VIDEO_OPTION_KEYS

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
PLACEHOLDER = re.compile(r"(<image>|<video>)")


def _role(raw: Any) -> str:
    role = ROLES.get(str(raw).lower()) if raw is not None else None
    if role is None:
        raise InvalidConversationError(f"unknown role {raw!r} (expected one of {sorted(ROLES)})")
    return role


def _first_held(turn: Mapping, *keys: str) -> Any:
    """The first of ``keys`` whose value is not None (Arrow gives mixed turns every key, unset ones None)."""
    return next((turn[k] for k in keys if turn.get(k) is not None), None)


def _turn_list(value: Any, field: str) -> list[dict]:
    """``{"role", "content"}`` turns of a list of ``from``/``value`` or ``role``/``content`` dicts."""
    if not isinstance(value, (list, tuple)):
        raise InvalidConversationError(f"'{field}' must be a list of messages, got {type(value).__name__}")
    if not all(isinstance(m, Mapping) for m in value):
        raise InvalidConversationError(f"every entry of '{field}' must be a dict")
    return [{"role": _first_held(m, "role", "from"), "content": _first_held(m, "content", "value")} for m in value]


class _Media:
    """Resolves the record's media lists in slot order and checks each is used exactly once."""

    def __init__(
        self, images: list, videos: list, image_dir: str | None, video_options: Mapping[str, Any] | None
    ) -> None:
        self.given = {"image": images, "video": videos}
        self.image_dir, self.video_options = image_dir, dict(video_options or {})
        self.used = {"image": 0, "video": 0}

    def image_part(self, payload: Any = None) -> dict:
        if payload is None:
            payload = self._next("image")
        return {"type": "image", "image": resolve_image(payload, self.image_dir)}

    def video_part(self, payload: Any = None, options: Mapping[str, Any] | None = None) -> dict:
        """The part's own options win over the dataset-wide ``video_options``."""
        if payload is None:
            payload = self._next("video")
        video = resolve_video(payload, self.image_dir)
        return {"type": "video", "video": video, **self.video_options, **(options or {})}

    def _next(self, kind: str) -> Any:
        index = self.used[kind]
        self.used[kind] += 1
        return self.given[kind][index]

    def check_counts(self, slots: dict[str, int]) -> None:
        """Raise unless the slots (placeholders or payload-less parts) match the media lists one to one."""
        for kind, items in self.given.items():
            if slots[kind] != len(items):
                raise PlaceholderMismatchError(f"{slots[kind]} <{kind}> placeholders, {len(items)} {kind}s")


def _is_media_part(part: Any) -> bool:
    return isinstance(part, Mapping) and str(part.get("type")) in ("image", "image_url", "video", "video_url")


def _part_kind(part: Mapping) -> str:
    return "image" if str(part["type"]).startswith("image") else "video"


def _part_payload(part: Mapping) -> Any:
    kind = _part_kind(part)
    return _first_held(part, kind, f"{kind}_url")


def _slots(content: str | list) -> dict[str, int]:
    """Media slots of one message: placeholders in text, media parts without a payload."""
    if isinstance(content, str):
        return {kind: content.count(f"<{kind}>") for kind in ("image", "video")}
    counts = {"image": 0, "video": 0}
    for part in content:
        if _is_media_part(part) and _part_payload(part) is None:
            counts[_part_kind(part)] += 1
    return counts


def _text_with_placeholders(text: str, media: _Media) -> str | list[dict]:
    pieces = [p for p in PLACEHOLDER.split(text) if p]
    if not any(p in ("<image>", "<video>") for p in pieces):
        return text
    return [
        media.image_part() if piece == "<image>" else media.video_part() if piece == "<video>"
        else {"type": "text", "text": piece}
        for piece in pieces
    ]


def _part(part: Any, media: _Media) -> dict | None:
    if not isinstance(part, Mapping):
        raise InvalidConversationError(f"content part must be a dict, got {type(part).__name__}")
    if not _is_media_part(part):
        if part.get("type") != "text":
            raise InvalidConversationError(f"unknown content part type {part.get('type')!r}")
        text = part.get("text")
        if isinstance(text, str) and PLACEHOLDER.search(text):
            # Typed content places media with its own parts; a placeholder here would be trained as literal text.
            raise PlaceholderMismatchError(
                f"a text part holds a {PLACEHOLDER.search(text).group()} placeholder: in typed content, put each "
                f'image or video in its own {{"type": "image"}} / {{"type": "video"}} part'
            )
        return {"type": "text", "text": text} if text else None
    if _part_kind(part) == "image":
        return media.image_part(_part_payload(part))
    options = {key: part[key] for key in VIDEO_OPTION_KEYS if part.get(key) is not None}
    return media.video_part(_part_payload(part), options)


def _with_system(messages: list[dict], system: str | None) -> list[dict]:
    """Put the record-level system prompt first, refusing one that contradicts a system message."""
    if system is None:
        return messages
    if messages and messages[0]["role"] == "system":
        if messages[0]["content"] != system:
            raise InvalidConversationError("the record's system field and its first (system) message differ")
        return messages
    return [{"role": "system", "content": system}, *messages]


def _media_first(messages: list[dict], media: _Media) -> None:
    """No slots anywhere: every image, then every video, goes at the start of the first user message."""
    user = next((m for m in messages if m["role"] == "user"), None)
    if user is None:
        raise PlaceholderMismatchError("media given but the conversation has no user message to put them in")
    leading = [{"type": kind} for kind, items in media.given.items() for _ in items]
    text = user["content"]
    user["content"] = leading + (text if isinstance(text, list) else [{"type": "text", "text": text}] if text else [])


def assemble(
    turns: list[dict], fields: RecordFields, image_dir: str | None, video_options: Mapping[str, Any] | None
) -> list[dict]:
    """``{"role", "content": str | parts}`` turns plus the record's media and system -> internal messages.

    Raises:
        InvalidConversationError, PlaceholderMismatchError, ImageLoadError, UnsafePathError.
    """
    messages = []
    for turn in turns:
        content = turn["content"]
        if content is not None and not isinstance(content, (str, list, tuple)):
            raise InvalidConversationError(f"message content must be a string or a list of parts, got {content!r}")
        content = "" if content is None else list(content) if isinstance(content, tuple) else content
        messages.append({"role": _role(turn["role"]), "content": content})
    messages = _with_system(messages, fields.system())
    media = _Media(fields.media("image"), fields.media("video"), image_dir, video_options)
    slots = {kind: sum(_slots(m["content"])[kind] for m in messages) for kind in ("image", "video")}
    has_media_parts = any(not isinstance(m["content"], str) and any(map(_is_media_part, m["content"]))
                          for m in messages)
    if not any(slots.values()) and not has_media_parts and any(media.given.values()):
        _media_first(messages, media)
        slots = {kind: len(items) for kind, items in media.given.items()}
    media.check_counts(slots)
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            message["content"] = _text_with_placeholders(content, media)
        else:
            message["content"] = [p for p in (_part(part, media) for part in content) if p is not None]
    if not messages:
        raise InvalidConversationError("empty conversation")
    for i, message in enumerate(messages):
        if not message["content"]:
            raise InvalidConversationError(f"message {i} ({message['role']}) has no content")
    return messages


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
        if any(isinstance(t["content"], (list, tuple)) for t in turns):
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
        texts = fields.get("texts")
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, Mapping) for t in texts):
            raise InvalidConversationError("'texts' must be a list of {'user', 'assistant'} dicts")
        return [{"role": role, "content": t.get(role)} for t in texts for role in ("user", "assistant")]


class InputOutputToMessages:
    """One question and its answer: ``input`` / ``question`` and ``output`` / ``answer``."""

    name = "input_output"

    def matches(self, fields: RecordFields) -> bool:
        return ("input" in fields or "question" in fields) and ("output" in fields or "answer" in fields)

    def turns(self, fields: RecordFields) -> list[dict]:
        return [
            {"role": "user", "content": fields.one_of(("input", "question"), "the question")},
            {"role": "assistant", "content": fields.one_of(("output", "answer"), "the answer")},
        ]


LAYOUTS = (
    ShareGPTToMessages(), OpenAIToMessages(), PromptCompletionToMessages(), CauldronToMessages(),
    InputOutputToMessages(),
)
_BY_NAME = {layout.name: layout for layout in LAYOUTS} | {"llava": LAYOUTS[0], "qwen_vl": LAYOUTS[0]}
FORMATS = tuple(_BY_NAME)


def check_format(format: str | None) -> None:
    """Raise ValueError unless ``format`` is a layout name or None (detect)."""
    if format is not None and format not in _BY_NAME:
        raise ValueError(f"format must be one of {FORMATS} or None (detect per record), got {format!r}")


class RecordToMessages:
    """Message transform: one raw record -> ``{"messages": internal form, "layout": name}``.

    Args:
        format: a name in ``FORMATS`` or None to detect the layout per record.
        column_map: ``{expected field: your field}`` renames applied before anything else.
        image_dir: directory media paths resolve under (anything outside is refused).
        video_options: ``VideoOptions`` keys for every video part that does not set them itself.

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
    ) -> None:
        check_format(format)
        self.layout = None if format is None else _BY_NAME[format]
        self.column_map = check_column_map(column_map)
        self.image_dir, self.video_options = image_dir, video_options

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

    def __call__(self, record: Any) -> dict[str, Any]:
        if not isinstance(record, Mapping):
            raise InvalidConversationError(f"record must be a JSON object, got {type(record).__name__}")
        fields = RecordFields(record, self.column_map)
        layout = self.layout or _detect(fields)
        messages = assemble(layout.turns(fields), fields, self.image_dir, self.video_options)
        fields.check_all_read(layout.name)
        return {"messages": messages, "layout": layout.name}


def _detect(fields: RecordFields) -> Any:
    layout = next((layout for layout in LAYOUTS if layout.matches(fields)), None)
    if layout is None:
        raise InvalidConversationError(
            f"no layout matches the fields that hold values {sorted(fields.values)}; expected one of "
            f"conversations, messages, prompt+completion, texts, input+output (rename yours with column_map)"
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
) -> list[dict]:
    """One raw record -> internal-form messages (``RecordToMessages`` in one call)."""
    return RecordToMessages(fmt, column_map, image_dir=image_dir, video_options=video_options)(record)["messages"]
