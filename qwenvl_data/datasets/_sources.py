"""Random-access sources of raw records that hold an index, never the records themselves.

- ``JsonlSource``: JSON Lines files and JSON array files (told apart by content: a file whose first
  non-whitespace character is ``[`` is an array, whatever its name or ``source`` says); an int64 offset,
  int32 length and int32 file number per record (16 bytes a record). A record is read as its raw JSON text
  and parsed by the sample processor, so a malformed line is a counted bad sample named by file and line.
- ``HFSource``: a Hugging Face ``datasets.Dataset``, Arrow-backed and memory-mapped from disk
  (JSON, parquet, CSV, a saved dataset directory, or a ``Dataset`` object).
"""

import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from qwenvl_data._files import read_json

if TYPE_CHECKING:  # imported lazily: JSON Lines datasets (and their DataLoader workers) never need it
    import datasets


class RecordSource(Protocol):
    """What the map-style dataset reads: a length and raw records (dicts or JSON text) by index."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


def _as_paths(data_files: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    if isinstance(data_files, (str, os.PathLike)):
        return [os.fspath(data_files)]
    return [os.fspath(p) for p in data_files]


def _plain_data_files(data_files: Any) -> str | list[str] | dict[str, list[str]] | None:
    """YAML configs hand over OmegaConf containers; ``datasets`` wants plain str / list / dict."""
    if data_files is None or isinstance(data_files, (str, os.PathLike)):
        return None if data_files is None else os.fspath(data_files)
    if isinstance(data_files, Mapping):
        return {str(split): _as_paths(files) for split, files in data_files.items()}
    return _as_paths(data_files)


_SPACE = re.compile(r"[ \t\n\r]*")
UTF8_BOM = b"\xef\xbb\xbf"  # editors on Windows (and encoding="utf-8-sig") start files with it


def is_json_array_file(path: str) -> bool:
    """True when the file's first non-whitespace byte is ``[`` (a JSON array), False for JSON Lines."""
    with open(path, "rb") as f:
        while chunk := f.read(4096):
            stripped = chunk.removeprefix(UTF8_BOM).lstrip() if f.tell() == len(chunk) else chunk.lstrip()
            if stripped:
                return stripped.startswith(b"[")
    return False


def _line_spans(path: str) -> list[tuple[int, int]]:
    """``(start, end)`` byte spans of the non-blank lines of a JSON Lines file."""
    spans, position = [], 0
    with open(path, "rb") as f:
        for line in f:
            if line.strip():  # blank lines (e.g. a trailing one) are not records
                spans.append((position, position + len(line)))
            position += len(line)
    return spans


def _array_spans(path: str) -> list[tuple[int, int]]:
    """``(start, end)`` byte spans of the elements of a JSON array file (parsed once, nothing kept).

    Raises:
        ValueError: the file is not one JSON array, naming the file and the line of the fault.
    """
    with open(path, "rb") as f:
        data = f.read()
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


class JsonlSource:
    """Records of JSON Lines or JSON array files, indexed by byte offset; ``source[i]`` is the record's raw
    JSON text (bytes).

    Reads use ``os.pread`` at the record's offset (no shared file position), so threads and forked
    DataLoader workers can read concurrently.

    Args:
        data_files: one path or a list of paths; records are numbered across files in order. Each file
            is a JSON array when its first non-whitespace character is ``[``, JSON Lines otherwise.

    Raises:
        FileNotFoundError: a file does not exist.
        ValueError: a JSON array file that does not parse, naming the file and line.
    """

    def __init__(self, data_files: str | os.PathLike | Sequence[str | os.PathLike]) -> None:
        self.paths = _as_paths(data_files)
        offsets, ends, files = [], [], []
        for file_index, path in enumerate(self.paths):
            spans = _array_spans(path) if is_json_array_file(path) else _line_spans(path)
            offsets += [start for start, _ in spans]
            ends += [end for _, end in spans]
            files += [file_index] * len(spans)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.lengths = (np.asarray(ends, dtype=np.int64) - self.offsets).astype(np.int32)
        self.file_index = np.asarray(files, dtype=np.int32)
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fds"] = {}  # descriptors do not cross process boundaries
        return state

    def __del__(self) -> None:
        if getattr(self, "_pid", None) == os.getpid():
            for fd in self._fds.values():
                os.close(fd)

    def __len__(self) -> int:
        return len(self.offsets)

    def _fd(self, file_index: int) -> int:
        if self._pid != os.getpid():  # a forked worker opens its own descriptors
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(file_index)
        if fd is None:
            fd = self._fds[file_index] = os.open(self.paths[file_index], os.O_RDONLY)
        return fd

    def __getitem__(self, index: int) -> bytes:
        file_index = int(self.file_index[index])
        return os.pread(self._fd(file_index), int(self.lengths[index]), int(self.offsets[index]))

    def location(self, index: int) -> str:
        """Where record ``index`` starts: ``"<path> line <n>"`` (counted on demand, for error messages)."""
        file_index, offset = int(self.file_index[index]), int(self.offsets[index])
        with open(self.paths[file_index], "rb") as f:
            line = f.read(offset).count(b"\n") + 1
        return f"{self.paths[file_index]} line {line}"


class HFSource:
    """A Hugging Face ``datasets.Dataset`` as a record source (rows as dicts, memory-mapped).

    Rows are read as stored (``with_format("arrow")``), so ``Image`` columns arrive undecoded as
    ``{"bytes", "path"}`` dicts and go through our one media resolver like every other reference: a
    path-only image is confined to ``image_dir`` and refused when it is not a regular file (``datasets``
    would open a FIFO and hang), and a bad file is a counted, named skip instead of an exception from
    inside ``datasets``.
    """

    def __init__(self, dataset: "datasets.Dataset") -> None:
        self.dataset = dataset
        self._rows = dataset.with_format("arrow")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return self._rows[int(index)].to_pylist()[0]


def _load_dataset_parameters() -> set[str]:
    """The keyword names ``datasets.load_dataset`` takes (accepted, and unused, with JSON Lines files)."""
    import inspect

    import datasets

    return set(inspect.signature(datasets.load_dataset).parameters)


def _is_saved_dataset(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, n)) for n in ("dataset_info.json", "state.json", "dataset_dict.json"))


def load_hf_dataset(
    source: "str | os.PathLike | datasets.Dataset | datasets.DatasetDict",
    data_files: Any = None,
    split: str = "train",
    **load_dataset_kwargs: Any,
) -> "datasets.Dataset":
    """Open ``source`` as an Arrow-backed ``datasets.Dataset`` without downloading anything.

    Args:
        source: a ``Dataset`` / ``DatasetDict``, a builder name (``"json"``, ``"parquet"``, ``"csv"``,
            ``"arrow"``) used with ``data_files``, a directory written by ``save_to_disk``, or a local
            dataset directory of data files.
        data_files: files for a builder name (str, list or split dict).
        split: the split to take from a dataset dict.
        **load_dataset_kwargs: passed to ``datasets.load_dataset``.

    Returns:
        the split as a ``datasets.Dataset``.
    """
    import datasets

    if isinstance(source, datasets.DatasetDict):
        return source[split]
    if isinstance(source, datasets.Dataset):
        return source
    path = os.fspath(source)
    if os.path.isdir(path) and _is_saved_dataset(path):
        loaded = datasets.load_from_disk(path)
        return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    if data_files is None and not os.path.isdir(path):
        raise ValueError(f"source {path!r} needs data_files (or pass a dataset directory / Dataset object)")
    try:
        return datasets.load_dataset(path, data_files=data_files, split=split, **load_dataset_kwargs)
    except datasets.exceptions.DatasetGenerationError as error:
        raise _unreadable_data(path, data_files, error) from error


def _unreadable_data(builder: str, data_files: Any, error: Exception) -> ValueError:
    """The error for data files ``datasets`` could not read, naming the file (its own message does not)."""
    files = [f for fs in data_files.values() for f in _as_paths(fs)] if isinstance(data_files, Mapping) else (
        _as_paths(data_files) if data_files is not None else [])  # fmt: skip
    cause = error.__cause__ or error
    for file in files:
        if file.endswith(".json"):
            try:
                read_json(file)
            except ValueError as json_error:
                return ValueError(f"cannot read data file {json_error}")
    return ValueError(f"cannot read data files {files or builder} with the {builder!r} loader: "
                      f"{type(cause).__name__}: {cause}")  # fmt: skip


def open_source(
    source: Any, data_files: Any = None, split: str = "train", **load_dataset_kwargs: Any
) -> JsonlSource | HFSource:
    """Pick the cheapest random-access source: byte offsets for JSON (Lines or array) files, Arrow otherwise.

    ``source="json"`` or ``"jsonl"`` with plain ``.json`` / ``.jsonl`` files (either name: the content says
    which it is) is read by ``JsonlSource``, so records of different layouts keep their own fields (Arrow
    would merge them into one schema). Other files, or extra ``load_dataset_kwargs``, go through ``datasets``.
    """
    data_files = _plain_data_files(data_files)
    if isinstance(source, str) and source in ("json", "jsonl") and data_files is not None:
        if isinstance(data_files, dict) and split not in data_files:
            raise ValueError(f"data_files has no split {split!r} (splits: {sorted(data_files)})")
        paths = data_files[split] if isinstance(data_files, dict) else _as_paths(data_files)
        plain = all(p.endswith((".json", ".jsonl")) for p in paths)
        if source == "jsonl" or (plain and not load_dataset_kwargs):
            unknown = sorted(set(load_dataset_kwargs) - _load_dataset_parameters())
            if unknown:  # a misspelled option would otherwise vanish: nothing here reads it
                raise TypeError(
                    f"unexpected keyword argument(s) {unknown}: neither this dataset's options nor "
                    f"datasets.load_dataset's (check their spelling)"
                )
            return JsonlSource(paths)
    return HFSource(load_hf_dataset(source, data_files, split, **load_dataset_kwargs))


def source_root(source: Any, data_files: Any) -> str | None:
    """The directory media paths are confined to by default: the first data file's, else the source directory's.

    None for an in-memory ``datasets.Dataset``: its paths were written by the caller's own code and are used as
    given, as in a sample built in code (pass ``image_dir`` to confine them).
    """
    if data_files is not None and not isinstance(data_files, Mapping):
        return os.path.dirname(os.path.abspath(_as_paths(data_files)[0]))
    if isinstance(source, (str, os.PathLike)):
        return os.path.abspath(source) if os.path.isdir(source) else os.getcwd()
    return None
