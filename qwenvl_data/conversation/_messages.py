"""Turn any accepted conversation form into torchtune ``Message`` objects with one content layout.

Datasets hand us OpenAI/HF-style dicts, torchtune users hand us ``Message`` objects; normalising both
into ``Message`` with ``{"type": "text"|"image"|"video", "content": ...}`` parts lets the chat renderer
and torchtune's ``PromptTemplate`` work on a single shape.
"""

from collections.abc import Mapping, Sequence
from typing import Any

from torchtune.data import Message

from qwenvl_data.errors import InvalidConversationError, PlaceholderMismatchError
from qwenvl_data.video import VIDEO_OPTION_KEYS

ROLES = ("system", "user", "assistant")
MEDIA_TYPES = ("image", "video")
# Keys a video part may hold besides its options (others may be present as None: Arrow rows hold every key).
_VIDEO_PART_KEYS = frozenset(("type", "video", "content", "text", "image", "image_url", *VIDEO_OPTION_KEYS))


def sample_name(sample: Mapping[str, Any]) -> str:
    """How errors name a sample: by its ``id`` when the dataset gave it one."""
    return f"sample {sample['id']}" if "id" in sample else "sample (no id)"


def _part_kind(part: Mapping[str, Any]) -> str:
    """The kind of a content part, decided as the official chat template decides it."""
    kind = part.get("type")
    if kind in ("image", "image_url") or "image" in part or "image_url" in part:
        return "image"
    if kind == "video" or "video" in part:
        return "video"
    if kind == "text" or "text" in part:
        return "text"
    return str(kind)


def _normalise_part(part: Any, name: str) -> dict[str, Any]:
    """One content part as ``{"type", "content"}`` (video parts also keep their ``VideoOptions`` keys); media
    content is ``None`` when given separately."""
    if not isinstance(part, Mapping):
        raise InvalidConversationError(f"{name}: a content part must be a dict, got {type(part).__name__}")
    kind = _part_kind(part)
    if kind == "text":
        text = part.get("text", part.get("content"))
        if not isinstance(text, str):
            raise InvalidConversationError(f"{name}: text part without a string: {part!r}")
        return {"type": "text", "content": text}
    if kind == "image":
        # Any reference (an image_url's "url" dict included) is resolved when the image is loaded, by the
        # same resolver as everywhere else (qwenvl_data.vision._media_refs).
        source = part["image_url"] if "image_url" in part else part.get("image", part.get("content"))
        return {"type": "image", "content": source}
    if kind == "video":
        stray = sorted(k for k, v in part.items() if v is not None and k not in _VIDEO_PART_KEYS)
        if stray:
            raise InvalidConversationError(
                f"{name}: video part has unknown key(s) {stray}; video options are {', '.join(VIDEO_OPTION_KEYS)}"
            )
        options = {key: part[key] for key in VIDEO_OPTION_KEYS if part.get(key) is not None}
        return {"type": "video", "content": part.get("video", part.get("content")), **options}
    raise InvalidConversationError(f"{name}: unknown content part type {kind!r} (expected text, image or video)")


def _normalise_message(message: Any, index: int, name: str) -> Message:
    where = f"{name}, message {index}"
    if isinstance(message, Message):
        role, content, masked = message.role, message.content, message.masked
    elif isinstance(message, Mapping):
        role, content, masked = message.get("role"), message.get("content"), bool(message.get("masked", False))
    else:
        raise InvalidConversationError(f"{where}: expected a dict or torchtune Message, got {type(message).__name__}")
    if role not in ROLES:
        raise InvalidConversationError(f"{where}: unknown role {role!r} (expected one of {', '.join(ROLES)})")
    if isinstance(content, str):
        parts = [{"type": "text", "content": content}]
    elif isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
        parts = [_normalise_part(part, where) for part in content]
    else:
        raise InvalidConversationError(f"{where}: content must be a string or a list of parts, got {content!r}")
    return Message(role=role, content=parts, masked=masked)


def _fill_media(messages: list[Message], kind: str, given: Sequence[Any] | None, name: str) -> None:
    """Put the sample-level ``images``/``videos`` list into the media parts that came without content."""
    parts = [p for m in messages for p in m.content if p["type"] == kind]
    empty = [p for p in parts if p["content"] is None]
    given = list(given) if given is not None else []
    if len(empty) != len(given) or (given and len(empty) != len(parts)):
        raise PlaceholderMismatchError(
            f"{name}: {len(parts)} {kind} parts ({len(empty)} without content) but {len(given)} {kind}s given "
            f"in the sample's '{kind}s' list"
        )
    for part, media in zip(empty, given):
        part["content"] = media


def normalise_conversation(sample: Mapping[str, Any]) -> list[Message]:
    """The sample's ``messages`` as torchtune ``Message`` objects, media filled in and validated.

    Args:
        sample: ``{"messages": [Message | dict, ...], optional "id", optional "images"/"videos"}``;
            the lists supply media for parts given as bare ``{"type": "image"}`` placeholders, in order.
            A dict message is ``{"role", "content": str | [parts], optional "masked": bool}``; a part is
            ``{"type": "text", "text"}``, ``{"type": "image", "image"}``, ``{"type": "image_url", "image_url"}``
            or ``{"type": "video", "video", optional ``VideoOptions`` keys such as "fps", "max_frames"}``
            (torchtune's ``"content"`` key works too).

    Returns:
        list[Message] whose content parts are ``{"type": "text"|"image"|"video", "content": ...}``
        (video parts also carry the ``VideoOptions`` keys they were given).

    Raises:
        InvalidConversationError: no messages, an unknown role or a malformed message.
        PlaceholderMismatchError: media parts and the given media lists disagree in number.
    """
    name = sample_name(sample)
    raw = sample.get("messages")
    if not isinstance(raw, Sequence) or isinstance(raw, str) or len(raw) == 0:
        raise InvalidConversationError(f"{name}: the conversation is empty (no 'messages')")
    messages = [_normalise_message(m, i, name) for i, m in enumerate(raw)]
    for kind in MEDIA_TYPES:
        _fill_media(messages, kind, sample.get(f"{kind}s"), name)
    return messages


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
