"""Random-access sources of raw records that hold an index, never the records themselves.

- ``JsonlSource``: an int64 offset, int32 length and int32 file number per line (16 bytes a record); a record
  is read as its raw JSON line and parsed by the sample processor, so a malformed line is a counted, named
  bad sample.
- ``HFSource``: a Hugging Face ``datasets.Dataset``, Arrow-backed and memory-mapped from disk
  (JSON, parquet, CSV, a saved dataset directory, or a ``Dataset`` object).
"""

import os
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


class JsonlSource:
    """Records of JSON Lines files, indexed by byte offset; ``source[i]`` is the raw line (bytes).

    Reads use ``os.pread`` at the record's offset (no shared file position), so threads and forked
    DataLoader workers can read concurrently.

    Args:
        data_files: one path or a list of paths; records are numbered across files in order.

    Raises:
        FileNotFoundError: a file does not exist.
    """

    def __init__(self, data_files: str | os.PathLike | Sequence[str | os.PathLike]) -> None:
        self.paths = _as_paths(data_files)
        offsets, ends, files = [], [], []
        for file_index, path in enumerate(self.paths):
            with open(path, "rb") as f:
                position = 0
                for line in f:
                    if line.strip():  # blank lines (e.g. a trailing one) are not records
                        offsets.append(position)
                        ends.append(position + len(line))
                        files.append(file_index)
                    position += len(line)
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


class HFSource:
    """A Hugging Face ``datasets.Dataset`` as a record source (rows as dicts, memory-mapped)."""

    def __init__(self, dataset: "datasets.Dataset") -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return self.dataset[int(index)]


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
    """Pick the cheapest random-access source: byte offsets for JSON Lines, Arrow for everything else."""
    data_files = _plain_data_files(data_files)
    if isinstance(source, str) and source in ("json", "jsonl") and data_files is not None:
        paths = _as_paths(data_files) if not isinstance(data_files, dict) else None
        if paths and (source == "jsonl" or all(p.endswith(".jsonl") for p in paths)):
            return JsonlSource(paths)
        if source == "jsonl":
            raise ValueError("source='jsonl' takes data_files as a path or a list of paths")
    return HFSource(load_hf_dataset(source, data_files, split, **load_dataset_kwargs))


def source_root(source: Any, data_files: Any) -> str:
    """The directory relative media paths default to: the first data file's, else the source directory's."""
    if data_files is not None and not isinstance(data_files, Mapping):
        return os.path.dirname(os.path.abspath(_as_paths(data_files)[0]))
    if isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
        return os.path.abspath(source)
    return os.getcwd()
