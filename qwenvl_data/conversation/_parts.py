"""The one parser of a message's content parts, for records, OpenAI/HF-style dicts and torchtune ``Message``s.

A part becomes ``{"type": "text", "content": str}``, or ``{"type": "image"|"video", "content": reference or
None, **options}`` where None marks a slot the sample's media list fills and the options are the item's own
(``ImageOptions`` / ``VideoOptions`` keys). Every key counts only when its value is not None: Arrow and
``datasets`` rows give every part every key of the file, unset ones None.
"""

from collections.abc import Mapping
from typing import Any

from qwenvl_data.conversation._tools import tools_part
from qwenvl_data.errors import InvalidConversationError, PlaceholderMismatchError
from qwenvl_data.video import VideoOptions
from qwenvl_data.vision._media_options import MEDIA_OPTION_KEYS, ImageOptions, held_options

MEDIA_KINDS = ("image", "video")
# The ``type`` values accepted, by the kind of part they declare.
_TYPES = {"text": "text", "image": "image", "image_url": "image", "video": "video", "video_url": "video"}
# Where each kind keeps its payload: the OpenAI/HF keys, then torchtune's ``content``.
_PAYLOAD_KEYS = {
    "text": ("text", "content"),
    "image": ("image", "image_url", "content"),
    "video": ("video", "video_url", "content"),
}
PLACEHOLDERS = tuple(f"<{kind}>" for kind in MEDIA_KINDS)


def _kind(part: Mapping[str, Any]) -> str:
    """The part's kind: its ``type``, or, without one, the one kind whose payload key holds a value."""
    declared = part.get("type")
    if declared is not None:
        if declared not in _TYPES:
            raise InvalidConversationError(
                f"unknown content part type {declared!r} (expected one of {', '.join(_TYPES)})"
            )
        return _TYPES[declared]
    held = [kind for kind, keys in _PAYLOAD_KEYS.items() if any(part.get(key) is not None for key in keys[:-1])]
    if len(held) != 1:
        raise InvalidConversationError(f"content part without a 'type' and with payloads of {held or 'no'} kind")
    return held[0]


def parse_part(part: Any) -> dict[str, Any]:
    """One content part in the one form (module docstring).

    Args:
        part: ``{"type": "text", "text"}``, ``{"type": "image", "image", ...options}``, a system message's
            ``{"type": "tools", "content", "with_system"}`` (``_tools.tools_part``),
            ``{"type": "image_url", "image_url": {"url"}}``, ``{"type": "video", "video", ...options}``,
            ``{"type": "video_url", "video_url"}``, or torchtune's ``{"type", "content"}``; an image or video part
            without a payload is a slot for the sample's media list.

    Returns:
        dict: the part as above.

    Raises:
        InvalidConversationError: not a dict, an unknown type, two payloads, a text part without a string, a key
            this kind of part does not have, or an invalid option (named).
        PlaceholderMismatchError: a ``<image>``/``<video>`` placeholder inside a typed text part.
    """
    if not isinstance(part, Mapping):
        raise InvalidConversationError(f"a content part must be a dict, got {type(part).__name__}")
    if part.get("type") == "tools":  # a system message's tools, as ``build_messages`` put them there
        stray = sorted(key for key in part if key not in ("type", "content", "with_system"))
        if stray:
            raise InvalidConversationError(f"tools part has key(s) {stray} it does not use")
        return tools_part(part.get("content"), part.get("with_system"))
    kind = _kind(part)
    payloads = [key for key in _PAYLOAD_KEYS[kind] if part.get(key) is not None]
    if len(payloads) > 1:
        raise InvalidConversationError(f"{kind} part holds both {payloads[0]!r} and {payloads[1]!r}; keep one")
    options = held_options(part, kind) if kind in MEDIA_KINDS else {}
    used = {"type", *payloads, *options}
    stray = sorted(key for key, value in part.items() if value is not None and key not in used)
    if stray:
        options_known = f"; its options: {', '.join(MEDIA_OPTION_KEYS[kind])}" if kind in MEDIA_KINDS else ""
        raise InvalidConversationError(f"{kind} part has key(s) {stray} it does not use{options_known}")
    payload = part[payloads[0]] if payloads else None
    if kind == "text":
        return {"type": "text", "content": _text(payload, part, literal=payloads == ["content"])}
    try:
        ImageOptions(**options) if kind == "image" else VideoOptions().updated(options)
    except ValueError as error:
        raise InvalidConversationError(f"{kind} part: {error}") from error
    return {"type": kind, "content": payload, **options}


def _text(text: Any, part: Mapping[str, Any], literal: bool) -> str:
    """The text of a part. A placeholder in an OpenAI/HF ``text`` would be trained as literal text: refused. A
    torchtune part's ``content`` is final (a tool's description may well say ``<image>``): kept as written."""
    if not isinstance(text, str):
        raise InvalidConversationError(f"text part without a string: {dict(part)!r}"[:200])
    placeholder = None if literal else next((p for p in PLACEHOLDERS if p in text), None)
    if placeholder is not None:
        # Typed content places media with its own parts; a placeholder here would be trained as literal text.
        raise PlaceholderMismatchError(
            f"a text part holds a {placeholder} placeholder: in typed content, put each image or video in its "
            f'own {{"type": "image"}} / {{"type": "video"}} part'
        )
    return text
