"""A record's fields as the layouts see them: renamed by ``column_map``, only those that hold a value, and
with every read remembered, so that a media or system field no layout read is an error, never a silent loss.

"Holds a value": not None and not an empty string/list/dict. Arrow (parquet, HF datasets) gives every row
every column of the file, filling absent ones with None, so the presence of a key says nothing. One exception:
a system prompt of "" holds a value, an explicitly empty system turn.
"""

from collections.abc import Mapping
from typing import Any

from qwenvl_data.errors import InvalidConversationError, UnreadFieldError

# Spellings of the fields that carry media or a system prompt, by what they carry.
MEDIA_FIELDS = {"image": ("image", "images"), "video": ("video", "videos")}
SYSTEM_FIELDS = ("system", "system_prompt")
# Every field name some layout reads (the keys ``column_map`` may name). A record holding one that its layout
# did not read is refused, whatever the layout: its value would otherwise be lost without a word. Fields no
# layout knows (a dataset's metadata: ``source``, ``score``) are not part of any conversation and stay out of it,
# unless the name is a misspelling of a known one (``typo_of``: ``histroy``, ``sytem``, ``imgaes``), refused too.
KNOWN_FIELDS = (
    *MEDIA_FIELDS["image"], *MEDIA_FIELDS["video"], *SYSTEM_FIELDS, "conversations", "messages", "texts", "tools",
    "instruction", "input", "output", "history", "prompt", "completion", "question", "answer", "id",
)
# Chat sets such as UltraChat keep a copy of the first user turn in ``prompt``: read as a copy when it equals it.
COPY_FIELDS = ("prompt", "question")


def holds_value(value: Any) -> bool:
    """True unless ``value`` is None or an empty string / list / tuple / dict."""
    if value is None:
        return False
    return not (isinstance(value, (str, list, tuple, dict)) and len(value) == 0)


def typo_of(name: str) -> str | None:
    """The known field ``name`` misspells, or None: one letter added, dropped or changed, or two neighbours swapped,
    between names of 5 letters or more (``text`` is a caption, not ``texts``). A known name with something appended
    (``answers``, ``question_id``, ``image_id``) is a field of its own (VQA sets carry them as metadata)."""
    if name in KNOWN_FIELDS or len(name) < 5:
        return None
    return next(
        (known for known in KNOWN_FIELDS if len(known) >= 5 and not name.startswith(known) and _one_edit(name, known)),
        None,
    )


def _one_edit(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` differ by one insertion, deletion, substitution or swap of neighbours."""
    if abs(len(a) - len(b)) > 1 or a == b:
        return False
    start = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    a_rest, b_rest = a[start:], b[start:]
    return (
        a_rest[1:] == b_rest[1:]  # substitution (or one trailing letter more or less)
        or a_rest[1:] == b_rest or a_rest == b_rest[1:]  # insertion / deletion
        or (len(a) == len(b) and a_rest[:2] == b_rest[1::-1] and a_rest[2:] == b_rest[2:])  # swap
    )


def check_column_map(column_map: Mapping[str, str] | None) -> dict[str, str]:
    """``column_map`` as a plain dict, refusing names no layout reads (typos would otherwise do nothing).

    Raises:
        ValueError: a key that is not in ``KNOWN_FIELDS`` or a value that is not a string.
    """
    column_map = dict(column_map or {})
    for expected, yours in column_map.items():
        if expected not in KNOWN_FIELDS:
            raise ValueError(f"column_map key {expected!r} is not a field any layout reads; known: {KNOWN_FIELDS}")
        if not isinstance(yours, str):
            raise ValueError(f"column_map[{expected!r}] must be your column's name (a string), got {yours!r}")
    return column_map


class RecordFields:
    """The value-holding fields of one record under their expected names, tracking which ones were read.

    Args:
        record: the raw record (a dict).
        column_map: ``{expected name: your field name}`` as torchtune's message transforms take it,
            e.g. ``{"conversations": "dialog", "images": "pictures"}``.
    """

    def __init__(self, record: Mapping[str, Any], column_map: Mapping[str, str]) -> None:
        renamed = {yours: expected for expected, yours in column_map.items()}
        held = {key: value for key, value in record.items() if holds_value(value) or _empty_system(key, value, renamed)}
        self.values: dict[str, Any] = {}
        for key, value in held.items():
            name = renamed.get(key, key)
            if name in self.values or (name != key and name in held and name not in renamed):
                raise InvalidConversationError(
                    f"column_map renames field {key!r} to {name!r}, which the record already holds; a rename never "
                    f"replaces a field: map {name!r} elsewhere or remove one of them"
                )
            self.values[name] = value
        self.read: set[str] = {"id"}

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def get(self, name: str) -> Any:
        """The field's value (None when it holds none); marks it read."""
        self.read.add(name)
        return self.values.get(name)

    def one_of(self, names: tuple[str, ...], what: str) -> Any:
        """The value of whichever spelling in ``names`` holds one (None if none does); all are marked read.

        Raises:
            InvalidConversationError: two spellings hold values (which one is meant is unknowable).
        """
        held = [name for name in names if name in self.values]
        self.read.update(names)
        if len(held) > 1:
            raise InvalidConversationError(f"fields {held} both hold {what}; keep one")
        return self.values[held[0]] if held else None

    def media(self, kind: str) -> list:
        """The record's ``kind`` ("image" | "video") list, from either spelling; a single value is a list of one."""
        value = self.one_of(MEDIA_FIELDS[kind], f"{kind}s")
        if value is None:
            return []
        return list(value) if isinstance(value, (list, tuple)) else [value]

    def system(self) -> str | None:
        """The record-level system prompt (``system`` or ``system_prompt``; "" is an empty one), or None."""
        value = self.one_of(SYSTEM_FIELDS, "a system prompt")
        if value is not None and not isinstance(value, str):
            raise InvalidConversationError(f"the system prompt must be a string, got {type(value).__name__}")
        return value

    def metadata(self) -> list[str]:
        """The value-holding fields no layout reads and that misspell none (left out of the conversation)."""
        return [name for name in self.values if name not in KNOWN_FIELDS and typo_of(name) is None]

    def check_all_read(self, layout: str, first_user_text: str | None) -> None:
        """Refuse the record when it holds a field some layout reads that this one did not (``prompt`` /
        ``question`` holding a copy of ``first_user_text`` count as read), or a misspelling of one (``typo_of``).

        Raises:
            UnreadFieldError: naming the field(s) and the layout (and the known field a misspelling is close to).
        """
        typos = {name: known for name in self.values if (known := typo_of(name)) is not None}
        if typos:
            guesses = "; ".join(f"{name!r}: did you mean {known!r}?" for name, known in typos.items())
            raise UnreadFieldError(
                f"field(s) {list(typos)} are not fields any layout reads and look misspelled ({guesses}); rename "
                "them (or map them with column_map)",
                tuple(typos),
            )
        copies = {name for name in COPY_FIELDS if self.values.get(name) == first_user_text}
        unread = [name for name in KNOWN_FIELDS if name in self.values and name not in self.read | copies]
        if unread:
            raise UnreadFieldError(
                f"field(s) {unread} hold values that the {layout!r} layout does not read; rename them with "
                "column_map, choose another format, or remove them",
                tuple(unread),
            )


def _empty_system(key: str, value: Any, renamed: Mapping[str, str]) -> bool:
    """A system field holding "": an explicitly empty system prompt, kept (every other empty value is unset)."""
    return value == "" and renamed.get(key, key) in SYSTEM_FIELDS
