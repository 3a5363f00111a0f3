"""Record formats -> the internal conversation form the model transform takes.

Internal form: ``{"id": ..., "messages": [{"role": "system"|"user"|"assistant", "content": str | [part, ...]}]}``
with parts ``{"type": "text", "text": str}``, ``{"type": "image", "image": PIL | bytes | path}`` and
``{"type": "video", "video": frames | file path, **VideoOptions keys}``. A message without media keeps a plain string.

Formats:
- ``"llava"``: ``conversations`` of ``{"from": "human"|"gpt"|"system", "value": str}``, media in ``image``
  (str or list) and ``video``; ``<image>`` / ``<video>`` placeholders mark where each goes (also plain ShareGPT).
- ``"sharegpt"`` (LLaMA-Factory): ``messages`` of ``{"role", "content": str}`` plus ``images`` / ``videos``
  lists, with ``<image>`` / ``<video>`` placeholders.
- ``"openai"`` (OpenAI / HF chat): ``messages`` whose content is a string or typed parts; image parts carry
  ``image`` (path, bytes, data URL, PIL) or ``image_url`` (``{"url": ...}``); parts without a payload take
  the record's ``images`` column in order (the HF ``datasets`` layout).
"""

import re
from collections.abc import Callable, Mapping
from typing import Any

from qwenvl_data.datasets._media import resolve_image, resolve_video
from qwenvl_data.errors import InvalidConversationError, PlaceholderMismatchError
from qwenvl_data.video import VIDEO_OPTION_KEYS

FORMATS = ("llava", "sharegpt", "openai")
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
PLACEHOLDER = re.compile(r"(<image>|<video>)")


def detect_format(record: dict) -> str:
    """The format of one record, from the fields it has (see the module docstring)."""
    if "conversations" in record:
        return "llava"
    messages = record.get("messages")
    if isinstance(messages, list):
        if any(isinstance(m, dict) and isinstance(m.get("content"), list) for m in messages):
            return "openai"
        if record.get("images") or record.get("videos"):
            return "sharegpt"
        return "openai"
    raise InvalidConversationError(f"record has neither 'conversations' nor 'messages' (fields: {sorted(record)})")


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _role(raw: Any) -> str:
    role = ROLES.get(str(raw).lower()) if raw is not None else None
    if role is None:
        raise InvalidConversationError(f"unknown role {raw!r} (expected one of {sorted(ROLES)})")
    return role


def _checked(messages: list[dict]) -> list[dict]:
    if not messages:
        raise InvalidConversationError("empty conversation")
    for i, message in enumerate(messages):
        if not message["content"]:
            raise InvalidConversationError(f"message {i} ({message['role']}) has no content")
    return messages


class _Media:
    """Resolves media lazily, in placeholder order, and checks every given item is used exactly once."""

    def __init__(self, images: list, videos: list, image_dir: str, video_options: Mapping | None) -> None:
        self.images, self.videos, self.image_dir = images, videos, image_dir
        self.video_options = dict(video_options or {})
        self.used = {"image": 0, "video": 0}

    def image_part(self, payload: Any = None) -> dict:
        if payload is None:
            payload = self._next("image", self.images)
        return {"type": "image", "image": resolve_image(payload, self.image_dir)}

    def video_part(self, payload: Any = None, options: Mapping | None = None) -> dict:
        """The part's own options win over the dataset-wide ``video_options``."""
        if payload is None:
            payload = self._next("video", self.videos)
        return {"type": "video", "video": resolve_video(payload, self.image_dir), **self.video_options, **(options or {})}

    def _next(self, kind: str, items: list) -> Any:
        index = self.used[kind]
        self.used[kind] += 1
        return items[index]

    def check_counts(self, placeholders: dict[str, int]) -> None:
        """Raise unless the placeholders (or payload-less parts) match the media lists one to one."""
        for kind, items in (("image", self.images), ("video", self.videos)):
            if placeholders[kind] != len(items):
                raise PlaceholderMismatchError(f"{placeholders[kind]} <{kind}> placeholders, {len(items)} {kind}s")


def _text_with_placeholders(text: str, media: _Media) -> str | list[dict]:
    pieces = [p for p in PLACEHOLDER.split(text) if p]
    if not any(p in ("<image>", "<video>") for p in pieces):
        return text
    parts = []
    for piece in pieces:
        if piece == "<image>":
            parts.append(media.image_part())
        elif piece == "<video>":
            parts.append(media.video_part())
        else:
            parts.append({"type": "text", "text": piece})
    return parts


def _placeholder_messages(
    turns: list[tuple[Any, Any]], images: list, videos: list, image_dir: str, video_options: Mapping | None
) -> list[dict]:
    """Shared by LLaVA and ShareGPT: (role, text) turns with placeholders -> internal messages."""
    texts = []
    for raw_role, text in turns:
        if text is not None and not isinstance(text, str):
            raise InvalidConversationError(f"message text must be a string, got {type(text).__name__}")
        texts.append((_role(raw_role), text or ""))
    media = _Media(images, videos, image_dir, video_options)
    media.check_counts({kind: sum(text.count(f"<{kind}>") for _, text in texts) for kind in ("image", "video")})
    return _checked([{"role": role, "content": _text_with_placeholders(text, media)} for role, text in texts])


def _messages_of(record: dict, key: str) -> list:
    messages = record.get(key)
    if not isinstance(messages, list):
        raise InvalidConversationError(f"'{key}' must be a list of messages, got {type(messages).__name__}")
    if not all(isinstance(m, dict) for m in messages):
        raise InvalidConversationError(f"every entry of '{key}' must be a dict")
    return messages


def _from_llava(record: dict, image_dir: str, video_options: Mapping | None) -> list[dict]:
    turns = [(m.get("from"), m.get("value")) for m in _messages_of(record, "conversations")]
    return _placeholder_messages(
        turns, _as_list(record.get("image")), _as_list(record.get("video")), image_dir, video_options
    )


def _from_sharegpt(record: dict, image_dir: str, video_options: Mapping | None) -> list[dict]:
    turns = [(m.get("role"), m.get("content")) for m in _messages_of(record, "messages")]
    return _placeholder_messages(
        turns, _as_list(record.get("images")), _as_list(record.get("videos")), image_dir, video_options
    )


def _openai_part(part: Any, media: _Media) -> dict | None:
    if not isinstance(part, dict):
        raise InvalidConversationError(f"content part must be a dict, got {type(part).__name__}")
    kind = part.get("type")
    if kind == "text":
        return {"type": "text", "text": part["text"]} if part.get("text") else None
    if kind in ("image", "image_url"):
        payload = part.get("image") if part.get("image") is not None else part.get("image_url")
        return media.image_part(payload)
    if kind in ("video", "video_url"):
        payload = part.get("video") if part.get("video") is not None else part.get("video_url")
        return media.video_part(payload, {key: part[key] for key in VIDEO_OPTION_KEYS if part.get(key) is not None})
    raise InvalidConversationError(f"unknown content part type {kind!r}")


def _from_openai(record: dict, image_dir: str, video_options: Mapping | None) -> list[dict]:
    raw_messages = _messages_of(record, "messages")
    media = _Media(_as_list(record.get("images")), _as_list(record.get("videos")), image_dir, video_options)
    # Parts without a payload draw from the record's images/videos columns; count them before resolving.
    counts = {"image": 0, "video": 0}
    for message in raw_messages:
        if isinstance(message.get("content"), list):
            for part in message["content"]:
                if isinstance(part, dict) and part.get("type") in ("image", "image_url", "video", "video_url"):
                    kind = "image" if part["type"].startswith("image") else "video"
                    counts[kind] += part.get(kind) is None and part.get(f"{kind}_url") is None
    media.check_counts(counts)
    messages = []
    for message in raw_messages:
        content = message.get("content")
        if isinstance(content, list):
            parts = [_openai_part(part, media) for part in content]
            content = [p for p in parts if p is not None]
        elif content is not None and not isinstance(content, str):
            raise InvalidConversationError("message content must be a string or a list of parts")
        messages.append({"role": _role(message.get("role")), "content": content or ""})
    return _checked(messages)


CONVERTERS: dict[str, Callable[[dict, str, Mapping | None], list[dict]]] = {
    "llava": _from_llava,
    "sharegpt": _from_sharegpt,
    "openai": _from_openai,
}


def to_conversation(record: Any, fmt: str | None, image_dir: str, video_options: Mapping | None = None) -> list[dict]:
    """One raw record -> internal-form messages.

    Args:
        record: a dict in one of ``FORMATS``.
        fmt: the format name, or None to detect it per record.
        image_dir: directory media paths resolve under (anything outside is refused).
        video_options: dataset-wide ``VideoOptions`` keys for every video part (a part's own keys win).

    Returns:
        messages in the internal form (module docstring).

    Raises:
        InvalidConversationError, PlaceholderMismatchError, ImageLoadError, UnsafePathError.
    """
    if not isinstance(record, dict):
        raise InvalidConversationError(f"record must be a JSON object, got {type(record).__name__}")
    fmt = detect_format(record) if fmt is None else fmt
    if fmt not in CONVERTERS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS} or None to detect")
    return CONVERTERS[fmt](record, image_dir, video_options)
