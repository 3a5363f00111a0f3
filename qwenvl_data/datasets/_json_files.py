"""JSON data files as the byte spans of their records: one reading for the map-style index and the stream.

A file whose first non-whitespace byte (after an optional UTF-8 byte-order mark) is ``[`` is a JSON array,
anything else JSON Lines, whatever its name. A record is kept as its raw JSON text and parsed by the sample
processor, so a malformed line is a bad sample named by file and line; a JSON array is checked whole when it
is read (its elements' spans come from one parse), so a broken array is an error naming file and line.
"""

import json
import re
from collections.abc import Iterator

_SPACE = re.compile(r"[ \t\n\r]*")
UTF8_BOM = b"\xef\xbb\xbf"  # editors on Windows (and encoding="utf-8-sig") start files with it

Span = tuple[int, int]  # (start, end) byte offsets of one record's JSON text


def is_json_array_file(path: str) -> bool:
    """True when the file's first non-whitespace byte is ``[`` (a JSON array), False for JSON Lines."""
    with open(path, "rb") as f:
        while chunk := f.read(4096):
            stripped = chunk.removeprefix(UTF8_BOM).lstrip() if f.tell() == len(chunk) else chunk.lstrip()
            if stripped:
                return stripped.startswith(b"[")
    return False


def json_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """``(start offset, line)`` of each record of a JSON Lines file; blank lines (e.g. a trailing one) are none."""
    position = 0
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                yield position, line
            position += len(line)


def array_spans(data: bytes, path: str) -> list[Span]:
    """Byte spans of the elements of the JSON array ``data`` (the contents of ``path``), parsed once.

    Raises:
        ValueError: ``data`` is not one JSON array, naming the file and the line of the fault.
    """
    text, decoder = data.decode("utf-8"), json.JSONDecoder()
    # Spans are taken in characters and converted to bytes as we go (UTF-8 lengths differ).
    spans, char_pos, byte_pos = [], 0, 0

    def to_bytes(pos: int) -> int:
        nonlocal char_pos, byte_pos
        byte_pos += len(text[char_pos:pos].encode("utf-8"))
        char_pos = pos
        return byte_pos

    def fault(pos: int, what: str) -> ValueError:
        line = text.count("\n", 0, pos) + 1
        return ValueError(f"{path} line {line}: {what}")

    pos = text.index("[") + 1
    while True:
        pos = _SPACE.match(text, pos).end()
        if text.startswith("]", pos) and not spans:
            break
        try:
            _, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise fault(err.pos, f"invalid JSON in the array ({err.msg})") from err
        spans.append((to_bytes(pos), to_bytes(end)))
        pos = _SPACE.match(text, end).end()
        if text.startswith("]", pos):
            break
        if not text.startswith(",", pos):
            raise fault(pos, "expected ',' or ']' between array elements")
        pos += 1
    if text[pos + 1 :].strip():
        raise fault(pos + 1, "text after the end of the JSON array")
    return spans


def read_array(path: str) -> tuple[bytes, list[Span]]:
    """The bytes of a JSON array file and its elements' spans (see ``array_spans``)."""
    with open(path, "rb") as f:
        data = f.read()
    return data, array_spans(data, path)


def record_spans(path: str) -> list[Span]:
    """The byte span of every record of a JSON data file (array or lines, by content), in file order."""
    if is_json_array_file(path):
        return read_array(path)[1]
    return [(start, start + len(line)) for start, line in json_lines(path)]


def line_location(path: str, offset: int) -> str:
    """``"<path> line <n>"`` for the byte ``offset`` of ``path`` (counted on demand, for error messages)."""
    with open(path, "rb") as f:
        line = f.read(offset).count(b"\n") + 1
    return f"{path} line {line}"
