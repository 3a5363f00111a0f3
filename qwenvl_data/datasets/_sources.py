"""Random-access sources of raw records for the map-style dataset: they hold an index, never the records.

Which files and of which kind come from ``resolve_data_files`` (the rule streaming uses too); each kind is
opened here for reading by index:
- ``JsonlSource``: JSON Lines and JSON array files (see ``_json_files``); an int64 offset, int32 length and
  int32 file number per record (16 bytes a record). A record is its raw JSON text, parsed by the sample
  processor, so a malformed line is a counted bad sample named by file and line.
- ``HFSource``: a Hugging Face ``datasets.Dataset``, Arrow-backed and memory-mapped from disk: parquet files
  (through ``datasets``' Arrow cache), the Arrow files of a ``save_to_disk`` directory, a ``Dataset`` object.
- WebDataset tars are not indexed: they are read in sequence, by ``streaming_chat_dataset``.
Consecutive files of different kinds (or media directories) are read as one source, in file order
(``ConcatSource``). Every source is also its records' origin (``RecordOrigin``): ``location(index)`` for error
messages and ``media_dir(index)``, the directory that record's relative media paths resolve under by default
(its own data file's, from ``resolve_data_files``).
"""

import bisect
import inspect
import itertools
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from qwenvl_data.datasets._data_files import SOURCES, DataFile, expand_data_files, resolve_data_files
from qwenvl_data.datasets._json_files import line_location, record_spans

if TYPE_CHECKING:  # imported lazily: JSON Lines datasets (and their DataLoader workers) never need it
    import datasets


class RecordSource(Protocol):
    """What the map-style dataset reads: a length and raw records (dicts or JSON text) by index (and, optionally,
    ``location(index)`` and ``media_dir(index)``: see ``RecordOrigin``)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


class JsonlSource:
    """Records of JSON Lines or JSON array files, indexed by byte offset; ``source[i]`` is the record's raw
    JSON text (bytes).

    Reads use ``os.pread`` at the record's offset (no shared file position), so threads and forked
    DataLoader workers can read concurrently.

    Args:
        data_files: one path or a list of paths; records are numbered across files in order. Each file
            is a JSON array when its first non-whitespace character is ``[``, JSON Lines otherwise.
        media_dir: the directory the records' relative media paths resolve under (``media_dir(index)``) when
            the processor has no ``image_dir``; None: each record's own file's directory.

    Raises:
        FileNotFoundError: a file does not exist.
        ValueError: a JSON array file that does not parse, naming the file and line.
    """

    def __init__(
        self, data_files: str | os.PathLike | Sequence[str | os.PathLike], media_dir: str | None = None
    ) -> None:
        self._media_dir = media_dir
        single = isinstance(data_files, (str, os.PathLike))
        self.paths = [os.fspath(path) for path in ([data_files] if single else data_files)]
        offsets, ends, files = [], [], []
        for file_index, path in enumerate(self.paths):
            spans = record_spans(path)
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
        return line_location(self.paths[int(self.file_index[index])], int(self.offsets[index]))

    def media_dir(self, index: int) -> str:
        """The directory record ``index``'s relative media paths resolve under by default."""
        if self._media_dir is not None:
            return self._media_dir
        return os.path.dirname(os.path.abspath(self.paths[int(self.file_index[index])]))


class HFSource:
    """A Hugging Face ``datasets.Dataset`` as a record source (rows as dicts, memory-mapped).

    Rows are read as stored (``with_format("arrow")``), so ``Image`` columns arrive undecoded as
    ``{"bytes", "path"}`` dicts and go through our one media resolver like every other reference: a
    path-only image is confined to ``image_dir`` and refused when it is not a regular file (``datasets``
    would open a FIFO and hang), and a bad file is a counted, named skip instead of an exception from
    inside ``datasets``.
    """

    def __init__(self, dataset: "datasets.Dataset", media_dir: str | None = None) -> None:
        self.dataset, self._media_dir = dataset, media_dir
        self._rows = dataset.with_format("arrow")

    def media_dir(self, index: int) -> str | None:
        """The directory a row's relative media paths resolve under by default (None: a ``Dataset`` object's
        paths are used as given unless the processor has an ``image_dir``)."""
        return self._media_dir

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return self._rows[int(index)].to_pylist()[0]


class ConcatSource:
    """Several sources as one, records numbered across them in order (files of different kinds in one list)."""

    def __init__(self, parts: Sequence[RecordSource]) -> None:
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [len(part) for part in self.parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _part(self, index: int) -> tuple[RecordSource, int]:
        number = bisect.bisect_right(self.starts, index) - 1
        return self.parts[number], index - int(self.starts[number])

    def __getitem__(self, index: int) -> Any:
        part, local = self._part(int(index))
        return part[local]

    def location(self, index: int) -> str | None:
        """Where record ``index`` is, when its source can say (JSON files), else None."""
        return self._ask(index, "location")

    def media_dir(self, index: int) -> str | None:
        """The directory record ``index``'s relative media paths resolve under by default (its part's)."""
        return self._ask(index, "media_dir")

    def _ask(self, index: int, question: str) -> str | None:
        part, local = self._part(int(index))
        answer: Callable[[int], str | None] | None = getattr(part, question, None)
        return None if answer is None else answer(local)


def _check_load_dataset_kwargs(load_dataset_kwargs: dict[str, Any]) -> None:
    """A misspelled option would vanish where nothing reads it (JSON files are not read by ``datasets``)."""
    if not load_dataset_kwargs:
        return
    import datasets

    unknown = sorted(set(load_dataset_kwargs) - set(inspect.signature(datasets.load_dataset).parameters))
    if unknown:
        raise TypeError(
            f"unexpected keyword argument(s) {unknown}: neither this dataset's options nor "
            f"datasets.load_dataset's (check their spelling)"
        )


def _load_dataset(builder: str, paths: list[str], **load_dataset_kwargs: Any) -> "datasets.Dataset":
    """``datasets.load_dataset(builder, data_files=paths)`` (Arrow cache, memory-mapped), its error naming the files."""
    import datasets

    try:
        return datasets.load_dataset(builder, data_files=paths, split="train", **load_dataset_kwargs)
    except datasets.exceptions.DatasetGenerationError as error:
        cause = error.__cause__ or error
        raise ValueError(f"cannot read data files {paths} with the {builder!r} loader: "
                         f"{type(cause).__name__}: {cause}") from error  # fmt: skip


def _open_kind(kind: str, paths: list[str], media_dir: str, **load_dataset_kwargs: Any) -> RecordSource:
    """A source over consecutive files of one kind (``"json"`` standing for both JSON kinds; another ``datasets``
    builder name is read by ``datasets``) whose media resolve under ``media_dir``."""
    if kind == "json":
        return JsonlSource(paths, media_dir)
    if kind == "arrow":
        import datasets

        return HFSource(
            datasets.concatenate_datasets([datasets.Dataset.from_file(path) for path in paths]), media_dir
        )
    if kind == "tar":
        raise ValueError(
            f"{paths[0]}: WebDataset tar shards are read in sequence, not by index: use streaming_chat_dataset "
            f"(source: webdataset)"
        )
    return HFSource(_load_dataset(kind, paths, **load_dataset_kwargs), media_dir)


def open_files(files: Sequence[DataFile], **load_dataset_kwargs: Any) -> RecordSource:
    """A random-access source over resolved data files, records in file order, each answering ``media_dir`` with
    its own file's ``DataFile.media_dir``."""
    parts = [
        _open_kind(kind, [file.path for file in group], media_dir, **load_dataset_kwargs)
        for (kind, media_dir), group in itertools.groupby(
            files, key=lambda file: ("json" if file.kind == "jsonl" else file.kind, file.media_dir)
        )
    ]
    return parts[0] if len(parts) == 1 else ConcatSource(parts)


def open_source(source: Any, data_files: Any = None, split: str = "train", **load_dataset_kwargs: Any) -> RecordSource:
    """The map-style source of ``(source, data_files, split)``.

    Files are resolved by ``resolve_data_files`` (the streaming rule). Also accepted, map-style only: a
    ``datasets.Dataset`` / ``DatasetDict`` object (its ``split``; its ``media_dir`` is None), and another
    ``datasets`` builder name (``"csv"``, ...) with ``data_files``. ``load_dataset_kwargs`` go to
    ``datasets.load_dataset`` where it reads (parquet, other builders); JSON files are always indexed by byte
    offset, so records of different layouts keep their own fields (Arrow would merge them into one schema).

    Raises:
        TypeError: a keyword that ``datasets.load_dataset`` does not take either.
    """
    _check_load_dataset_kwargs(load_dataset_kwargs)
    if not isinstance(source, (str, os.PathLike, type(None))):
        import datasets

        return HFSource(source[split] if isinstance(source, datasets.DatasetDict) else source)
    if isinstance(source, str) and source not in SOURCES and not os.path.isdir(source):
        return open_files([DataFile(source, path) for path in expand_data_files(data_files, split)],
                          **load_dataset_kwargs)  # fmt: skip
    return open_files(resolve_data_files(source, data_files, split), **load_dataset_kwargs)
