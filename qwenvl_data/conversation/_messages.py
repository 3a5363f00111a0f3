"""Turns of any accepted form -> torchtune ``Message``s with one content layout, media placed and checked.

The record layouts (``_layouts``) and the model transform (OpenAI/HF-style dicts or ``Message``s handed to it in
your own code) both build their conversation here, so a role, a part, a placeholder and a media list mean the same
thing wherever they come from. Content parts are read by ``_parts.parse_part`` alone.
"""

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torchtune.data import Message

from qwenvl_data.conversation._parts import MEDIA_KINDS, parse_part
from qwenvl_data.conversation._tools import tool_call_texts, tools_part
from qwenvl_data.errors import InvalidConversationError, PlaceholderMismatchError

# Role spellings: OpenAI/HF ``role`` values, ShareGPT/LLaVA ``from`` values, and the tool turns of LLaMA-Factory
# (``function_call`` / ``observation``), ms-swift (``tool_call`` / ``tool_response``) and OpenAI (``tool``).
# A "tool_call" turn is an assistant's call: it joins the assistant turn before it, or is one.
ROLES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
    "observation": "tool", "tool_response": "tool", "tool": "tool", "function_call": "tool_call",
    "tool_call": "tool_call",
}  # fmt: skip
_PLACEHOLDER = re.compile(r"(<image>|<video>)")

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


def _message(turn: Any) -> tuple[Message, bool]:
    """One turn (``Message``, ``{"role"|"from", "content"|"value", "tool_calls"?, "masked"?}``) as a ``Message``
    in the one form, and whether it is a bare tool-call turn (which joins the assistant turn before it)."""
    calls = None
    if isinstance(turn, Message):
        role, content, masked = turn.role, turn.content, turn.masked
    elif isinstance(turn, Mapping):
        role, content = _first_held(turn, "role", "from"), _first_held(turn, "content", "value")
        masked, calls = bool(turn.get("masked")), turn.get("tool_calls") or None
    else:
        raise InvalidConversationError(f"expected a dict or torchtune Message, got {type(turn).__name__}")
    role = _role(role)
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
        turns: a non-empty list of ``Message``s or dicts ``{"role" | "from", "content" | "value", "masked"?}``;
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
    for index, turn in enumerate(turns):
        try:
            message, joins_assistant = _message(turn)
        except (InvalidConversationError, PlaceholderMismatchError) as error:
            raise type(error)(f"{prefix}message {index}: {error}") from error
        if joins_assistant and messages and messages[-1].role == "assistant":
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
        raise type(error)(f"{prefix}{error}") from error
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
