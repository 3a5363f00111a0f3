"""Turns of any accepted form -> torchtune ``Message``s with one content layout, media placed and checked.

The record layouts (``_layouts``) and the model transform (OpenAI/HF-style dicts or ``Message``s handed to it in
your own code) both build their conversation here, so a role, a part, a placeholder and a media list mean the same
thing wherever they come from. Content parts are read by ``_parts.parse_part`` alone.
"""

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torchtune.data import Message

from qwenvl_data.conversation._fields import holds_value
from qwenvl_data.conversation._parts import MEDIA_KINDS, parse_part
from qwenvl_data.conversation._tools import calls_in, tool_call_texts, tools_part
from qwenvl_data.errors import InvalidConversationError, PlaceholderMismatchError, UnreadFieldError

# Role spellings: OpenAI/HF ``role`` values, ShareGPT/LLaVA ``from`` values, and the tool turns of LLaMA-Factory
# (``function_call`` / ``observation``), ms-swift (``tool_call`` / ``tool_response``) and OpenAI (``tool``).
# A "tool_call" turn is an assistant's call: it joins the assistant turn before it, or is one.
ROLES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
    "observation": "tool", "tool_response": "tool", "tool": "tool", "function_call": "tool_call",
    "tool_call": "tool_call",
}  # fmt: skip
_PLACEHOLDER = re.compile(r"(<image>|<video>)")
# Per-message train flags, each ``key -> {value: trained}``: torchtune's ``masked``, OpenAI fine-tuning's ``weight``
# (0 or 1 on an assistant message: https://platform.openai.com/docs/guides/supervised-fine-tuning) and ms-swift's
# ``loss`` (true / false on a message: ms-swift's custom dataset docs). Each becomes the ``Message``'s ``masked``.
TRAIN_FLAGS = {"masked": {False: True, True: False}, "weight": {0: False, 1: True}, "loss": {False: False, True: True}}
# The other keys a message dict may hold: role and content in both spellings, the assistant's ``tool_calls``, and
# what OpenAI / transformers' chat messages carry that the Qwen chat templates do not render (a participant's or a
# tool's ``name``, a tool result's ``tool_call_id``; the results follow their calls in order). Any other key that
# holds a value (``_fields.holds_value``: Arrow gives every turn every key of the file, unset ones None) is refused
# (``UnreadFieldError``): it would be lost without a word (``reasoning_content``, an ``images`` list inside a
# message, a misspelled ``contnet``).
MESSAGE_KEYS = ("role", "from", "content", "value", "tool_calls", "name", "tool_call_id", *TRAIN_FLAGS)

Resolve = Callable[[str, Any], Any]  # (kind, reference) -> the value the model transform loads


def _first_held(turn: Mapping, *keys: str) -> Any:
    """The first of ``keys`` whose value is not None (Arrow gives mixed turns every key, unset ones None)."""
    return next((turn[k] for k in keys if turn.get(k) is not None), None)


def _role(raw: Any) -> str:
    role = ROLES.get(str(raw).lower()) if raw is not None else None
    if role is None:
        raise InvalidConversationError(f"unknown role {raw!r} (expected one of {', '.join(sorted(ROLES))})")
    return role


def _split_placeholders(text: str) -> list[dict[str, Any]]:
    """String content: ``<image>`` / ``<video>`` become media slots, the rest text parts."""
    return [
        {"type": piece[1:-1], "content": None} if _PLACEHOLDER.fullmatch(piece) else {"type": "text", "content": piece}
        for piece in _PLACEHOLDER.split(text)
        if piece
    ]


def _add_calls(parts: list[dict[str, Any]], calls: Any) -> None:
    """Append an assistant's tool calls as text, each joined to what precedes it by a newline."""
    for text in tool_call_texts(calls):
        parts.append({"type": "text", "content": ("\n" if parts else "") + text})


def _flags(turn: Mapping) -> dict[str, Any]:
    return {key: turn[key] for key in TRAIN_FLAGS if turn.get(key) is not None}


def _trained(turn: Mapping) -> bool | None:
    """Whether the turn's own flags (``TRAIN_FLAGS``) train it; None when it sets none.

    Raises:
        InvalidConversationError: a flag with another value (``weight`` is a number, the others booleans), or two
            flags that disagree.
    """
    said = set()
    for key, value in _flags(turn).items():
        meaning = TRAIN_FLAGS[key]
        valid = isinstance(value, (int, float)) if key == "weight" else isinstance(value, bool)
        if not valid or value not in meaning:
            raise InvalidConversationError(f"'{key}' must be one of {list(meaning)}, got {value!r}")
        said.add(meaning[value])
    if len(said) > 1:
        raise InvalidConversationError(f"the message's train flags disagree: {_flags(turn)}")
    return said.pop() if said else None


def _message(turn: Any) -> tuple[Message, bool]:
    """One turn (``Message``, or a dict of ``MESSAGE_KEYS``) as a ``Message`` in the one form, and whether it is a
    bare tool-call turn (which joins the assistant turn before it).

    Raises:
        UnreadFieldError: a dict key outside ``MESSAGE_KEYS`` holds a value.
        InvalidConversationError: a malformed turn, or a non-assistant turn whose flags ask to train it.
    """
    calls, trained = None, None
    if isinstance(turn, Message):
        role, content, masked = turn.role, turn.content, turn.masked
    elif isinstance(turn, Mapping):
        unread = tuple(sorted(key for key, value in turn.items() if holds_value(value) and key not in MESSAGE_KEYS))
        if unread:
            raise UnreadFieldError(
                f"key(s) {list(unread)} of the message are not read (a message holds {', '.join(MESSAGE_KEYS)}); "
                "remove them or move their content into 'content'",
                tuple(f"message.{key}" for key in unread),
            )
        role, content = _first_held(turn, "role", "from"), _first_held(turn, "content", "value")
        trained, calls = _trained(turn), turn.get("tool_calls") or None
        masked = trained is False
    else:
        raise InvalidConversationError(f"expected a dict or torchtune Message, got {type(turn).__name__}")
    role = _role(role)
    if trained and role not in ("assistant", "tool_call"):
        raise InvalidConversationError(
            f"a {role} message is marked to train ({_flags(turn)}); "
            "only assistant turns train (train_on_input trains every token)"
        )
    if role == "tool_call":
        parts: list[dict[str, Any]] = []
        _add_calls(parts, content)
        return Message(role="assistant", content=parts, masked=masked), True
    if calls is not None:
        if role != "assistant":
            raise InvalidConversationError(f"a {role} message holds tool_calls; only assistant messages call tools")
        parts = [] if content is None else _parts(content)
        _add_calls(parts, calls)
        return Message(role=role, content=parts, masked=masked), False
    return Message(role=role, content=_parts(content), masked=masked), False


def _parts(content: Any) -> list[dict[str, Any]]:
    """Message content as parts: string content split at its placeholders, list content parsed part by part."""
    if content is None:
        raise InvalidConversationError("the message has no content (missing, null or empty)")
    if isinstance(content, str):
        return _split_placeholders(content)
    if isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
        return [part for part in map(parse_part, content) if part["type"] != "text" or part["content"]]
    raise InvalidConversationError(f"content must be a string or a list of parts, got {content!r}"[:200])


def _with_system(messages: list[Message], system: str | None) -> list[Message]:
    """Put the record-level system prompt first, refusing one that contradicts a system message."""
    if system is None:
        return messages
    if messages and messages[0].role == "system":
        if messages[0].text_content != system:
            raise InvalidConversationError("the record's system field and its first (system) message differ")
        return messages
    return [Message(role="system", content=[{"type": "text", "content": system}] if system else []), *messages]


def _with_tools(messages: list[Message], tools: Any) -> list[Message]:
    """The tools part (``_tools.tools_part``) at the end of the system message, which is added when there is none."""
    if messages[0].role == "system":
        if any(part["type"] != "text" for part in messages[0].content):
            raise InvalidConversationError("a system message with images, videos or tools cannot take the tools field")
        return [Message("system", [*messages[0].content, tools_part(tools, with_system=True)]), *messages[1:]]
    return [Message("system", [tools_part(tools, with_system=False)]), *messages]


def _slots(messages: list[Message], kind: str) -> list[dict[str, Any]]:
    return [part for m in messages for part in m.content if part["type"] == kind and part["content"] is None]


def _place_media(messages: list[Message], given: dict[str, list]) -> None:
    """Fill the media slots with the given lists, in order; with no media part anywhere, every image, then every
    video, goes at the start of the first user message (torchtune's and TRL's rule). LLaVA-Video writes
    ``<image>`` for its video: image slots of a sample with videos, no images and no video slot are video slots.

    Raises:
        PlaceholderMismatchError: slots and the lists disagree in number, or there is no user message.
    """
    has_media = any(part["type"] in MEDIA_KINDS for message in messages for part in message.content)
    if not has_media and any(given.values()):
        user = next((m for m in messages if m.role == "user"), None)
        if user is None:
            raise PlaceholderMismatchError("media given but the conversation has no user message")
        user.content[:0] = [{"type": kind, "content": None} for kind in MEDIA_KINDS for _ in given[kind]]
    if given["video"] and not given["image"] and not _slots(messages, "video"):
        for part in _slots(messages, "image"):
            part["type"] = "video"
    for kind in MEDIA_KINDS:
        slots = _slots(messages, kind)
        carried = [part for m in messages for part in m.content if part["type"] == kind and part["content"] is not None]
        if given[kind] and not slots and carried:
            raise PlaceholderMismatchError(
                f"field '{kind}s' ({len(given[kind])} {kind}s) is not used by any part: the {len(carried)} {kind} "
                f"part(s) carry their own payloads (remove the field, or leave the parts' payloads out so that "
                f"they take the list in order)"
            )
        if len(slots) != len(given[kind]):
            raise PlaceholderMismatchError(
                f"{len(slots)} <{kind}> placeholders, {len(given[kind])} {kind}s given in the '{kind}s' list "
                f"(a placeholder is <{kind}> in string content or a {kind} part without content)"
            )
        for part, item in zip(slots, given[kind]):
            part["content"] = item


def _unanswered_after(message: Message, joins_assistant: bool, unanswered: int, where: str) -> int:
    """The calls still unanswered after ``message``: a result answers one (LLaMA-Factory's one ``observation`` for
    parallel calls too), an assistant turn's calls open, any other turn closes them.

    Raises:
        InvalidConversationError: a tool result with no unanswered call before it (LLaMA-Factory drops such records).
    """
    if message.role == "tool":
        if unanswered == 0:
            raise InvalidConversationError(
                f"{where}: a tool result with no tool call before it that it answers (a result follows an assistant "
                "turn's call, one result per call at most)"
            )
        return unanswered - 1
    if message.role != "assistant":
        return 0
    calls = sum(calls_in(part["content"]) for part in message.content if part["type"] == "text")
    return unanswered + calls if joins_assistant else calls


def build_messages(
    turns: Any,
    *,
    images: Sequence[Any] | None = None,
    videos: Sequence[Any] | None = None,
    system: str | None = None,
    tools: Any = None,
    resolve: Resolve | None = None,
    video_defaults: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> list[Message]:
    """The conversation as torchtune ``Message``s whose parts are ``{"type": "text"|"image"|"video", "content"}``
    (media parts also carry their own options, see ``_parts``).

    Args:
        turns: a non-empty list of ``Message``s or dicts of ``MESSAGE_KEYS`` (a train flag sets ``masked``);
            string content may hold ``<image>`` / ``<video>`` placeholders, list content holds parts.
        images, videos: media for the slots (placeholders and payload-less parts), in order.
        system: a record-level system prompt, put first ("" is an empty system turn); None for none.
        tools: function schemas (a list, or its JSON text) for the system turn's tools block (``_tools``).
        resolve: applied to every media reference (the datasets confine paths to ``image_dir`` with it).
        video_defaults: ``VideoOptions`` keys for every video part that does not set them itself.
        name: how errors name the sample (None: they do not; the dataset names it).

    Raises:
        InvalidConversationError: no turns, an unknown role or a malformed message or part.
        PlaceholderMismatchError: slots and media lists disagree in number.
    """
    prefix = "" if name is None else f"{name}: "
    if not isinstance(turns, Sequence) or isinstance(turns, (str, bytes)) or len(turns) == 0:
        raise InvalidConversationError(f"{prefix}the conversation is empty (no messages)")
    messages: list[Message] = []
    unanswered = 0  # calls of the latest assistant turn that no result has answered yet
    for index, turn in enumerate(turns):
        try:
            message, joins_assistant = _message(turn)
        except (InvalidConversationError, PlaceholderMismatchError) as error:
            raise error.reworded(f"{prefix}message {index}: {error}") from error
        unanswered = _unanswered_after(message, joins_assistant, unanswered, f"{prefix}message {index}")
        if joins_assistant and messages and messages[-1].role == "assistant":
            if message.masked != messages[-1].masked:
                raise InvalidConversationError(
                    f"{prefix}message {index}: a tool call turn and the assistant turn it joins differ in whether "
                    "they train (weight / loss / masked)"
                )
            target = messages[-1].content
            for part in message.content:  # tool-call texts, each starting "<tool_call>" or "\n<tool_call>"
                target.append({"type": "text", "content": ("\n" if target else "") + part["content"].lstrip("\n")})
        else:
            messages.append(message)
    try:
        messages = _with_system(messages, system)
        if tools is not None:
            messages = _with_tools(messages, tools)
        _place_media(messages, {"image": list(images or ()), "video": list(videos or ())})
    except (InvalidConversationError, PlaceholderMismatchError) as error:
        raise error.reworded(f"{prefix}{error}") from error
    for part in (p for message in messages for p in message.content if p["type"] in MEDIA_KINDS):
        if resolve is not None:
            part["content"] = resolve(part["type"], part["content"])
        if part["type"] == "video":
            part.update({k: v for k, v in (video_defaults or {}).items() if part.get(k) is None and v is not None})
    return messages


def normalise_conversation(sample: Mapping[str, Any], name: str) -> list[Message]:
    """A model-transform sample's ``messages`` (``Message``s or OpenAI/HF-style dicts) with its ``images`` /
    ``videos`` lists placed: ``build_messages`` on the sample's keys, errors naming it ``name``."""
    return build_messages(
        sample.get("messages"), images=sample.get("images"), videos=sample.get("videos"), tools=sample.get("tools"),
        name=name,
    )


def generation_prompt(messages: list[Message], name: str) -> list[Message]:
    """The conversation a model should continue: without a final assistant message.

    A record that ends with its reference answer then becomes the question it answers. (The official
    template with ``add_generation_prompt`` would render that answer and open another assistant turn.)

    Raises:
        InvalidConversationError: nothing but one assistant message.
    """
    if messages[-1].role == "assistant":
        messages = messages[:-1]
    if not messages:
        raise InvalidConversationError(f"{name}: nothing to answer: the conversation is one assistant message")
    return messages
