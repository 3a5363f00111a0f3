"""Which files a dataset reads and what each holds: the one resolver behind map-style and streaming datasets.

``resolve_data_files(source, data_files, split)`` -> an ordered list of ``DataFile(kind, path, media_dir)``:
- ``data_files``: a path, a glob pattern (its matches sorted; ``**`` spans directories), a list of them (in
  list order), or ``{split: those}`` (the ``split`` entry). A file or pattern that matches nothing is a
  ``FileNotFoundError`` naming it.
- ``source``: ``"json"`` / ``"jsonl"`` / ``"parquet"`` / ``"arrow"`` / ``"webdataset"`` names the kind of
  ``data_files`` (None: each file's extension says); a directory is a ``save_to_disk`` dataset (its ``split``'s
  Arrow files, from ``state.json``) or a directory of data files (split by ``datasets``' file-name rules,
  ``train-*.jsonl`` / ``test.parquet`` ...).
- kinds: ``"jsonl"`` or ``"json"`` (an array) by content (see ``_json_files``) for JSON sources and
  ``.json`` / ``.jsonl`` files, ``"parquet"``, ``"arrow"`` (Arrow stream files), ``"tar"`` (WebDataset).
- ``media_dir``: where the relative media paths of the file's records resolve (and stay confined) when no
  ``image_dir`` is given: a directory ``source``, else the file's own directory, so that ``a/part.jsonl`` and
  ``b/part.jsonl`` each name their own ``pic.png``.
"""

import glob
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qwenvl_data.datasets._json_files import is_json_array_file

SOURCES = ("json", "jsonl", "parquet", "arrow", "webdataset")
_KIND_OF_SOURCE = {"json": "json", "jsonl": "json", "parquet": "parquet", "arrow": "arrow", "webdataset": "tar"}
_KIND_OF_EXTENSION = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow", ".tar": "tar"}


@dataclass(frozen=True)
class DataFile:
    """One data file and what it holds.

    Args:
        kind: ``"jsonl"`` | ``"json"`` (a JSON array) | ``"parquet"`` | ``"arrow"`` | ``"tar"`` (or, map-style only,
            another ``datasets`` builder name such as ``"csv"``).
        path: the file.
        media_dir: directory its records' relative media paths resolve under by default (None: the file's own).
    """

    kind: str
    path: str
    media_dir: str | None = None

    def __post_init__(self) -> None:
        if self.media_dir is None:
            object.__setattr__(self, "media_dir", os.path.dirname(os.path.abspath(self.path)))


def expand_data_files(data_files: Any, split: str = "train", root: str | None = None) -> list[str]:
    """The paths ``data_files`` names for ``split``, in order (see the module docstring).

    Args:
        data_files: a path or pattern, a list of them (also an OmegaConf list), or a split dict of those.
        split: the entry of a split dict; a plain path or list is the one split there is.
        root: directory relative paths are under (default: the working directory).

    Raises:
        ValueError: a split dict without ``split``, or no data files at all.
        FileNotFoundError: a path that is not a file, or a pattern that matches none.
    """
    if isinstance(data_files, Mapping):
        if split not in data_files:
            raise ValueError(f"data_files has no split {split!r} (splits: {sorted(map(str, data_files))})")
        data_files = data_files[split]
    if data_files is None:
        raise ValueError("data_files is not set: every source but a dataset directory needs data files")
    items = [data_files] if isinstance(data_files, (str, os.PathLike)) else list(data_files)
    paths = []
    for item in items:
        item = os.path.join(root, os.fspath(item)) if root is not None else os.fspath(item)
        if glob.has_magic(item):
            matches = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not matches:
                raise FileNotFoundError(f"data_files pattern {item!r} matches no file")
            paths.extend(matches)
        elif os.path.isfile(item):
            paths.append(item)
        elif os.path.isdir(item):
            raise FileNotFoundError(
                f"data file {item!r} is a directory, not a file: for a dataset directory (save_to_disk, or data "
                f"files split by name) pass source={item!r} without data_files; for its files, a pattern such as "
                f"data_files={os.path.join(item, '*.jsonl')!r}"
            )
        else:
            raise FileNotFoundError(f"data file {item!r} does not exist")
    if not paths:
        raise ValueError("data_files is an empty list")
    return paths


def _kind(path: str, source: str | None) -> str:
    extension = os.path.splitext(path)[1].lower()
    by_extension, by_source = _KIND_OF_EXTENSION.get(extension), _KIND_OF_SOURCE.get(source)
    if by_source is not None and by_extension not in (None, by_source):
        raise ValueError(f"data file {path!r} does not look like source={source!r} (extension {extension!r})")
    kind = by_source or by_extension
    if kind is None:
        raise ValueError(f"cannot tell the format of {path!r}: pass source= one of {SOURCES}")
    if kind == "json":
        return "json" if is_json_array_file(path) else "jsonl"
    return kind


def saved_dataset_files(directory: str, split: str) -> list[str] | None:
    """The Arrow files of a ``save_to_disk`` directory (of a ``DatasetDict``: its ``split``), in their order;
    None when ``directory`` was not written by ``save_to_disk``.

    Raises:
        ValueError: a ``DatasetDict`` without ``split``.
    """
    splits_file = os.path.join(directory, "dataset_dict.json")
    if os.path.isfile(splits_file):
        with open(splits_file) as f:
            splits = json.load(f)["splits"]
        if split not in splits:
            raise ValueError(f"dataset directory {directory!r} has splits {splits}, not {split!r}")
        directory = os.path.join(directory, split)
    state_file = os.path.join(directory, "state.json")
    if not os.path.isfile(state_file):
        return None
    with open(state_file) as f:
        return [os.path.join(directory, entry["filename"]) for entry in json.load(f)["_data_files"]]


def _directory_data_files(directory: str, split: str) -> list[str]:
    """The data files of ``split`` in a directory of data files, by ``datasets``' file-name rules (the ones
    ``load_dataset(directory)`` applies); files of kinds not read here (README.md, ...) are left out."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        by_split = DataFilesDict.from_patterns(get_data_patterns(directory), base_path=directory)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"dataset directory {directory!r} holds no data files ({error})") from error
    if split not in by_split:
        raise ValueError(f"dataset directory {directory!r} has splits {sorted(map(str, by_split))}, not {split!r}")
    paths = [p for p in by_split[split] if os.path.splitext(p)[1].lower() in _KIND_OF_EXTENSION]
    if not paths:
        raise FileNotFoundError(
            f"dataset directory {directory!r} has no {sorted(_KIND_OF_EXTENSION)} file for split {split!r}"
        )
    return paths


def resolve_data_files(source: Any, data_files: Any = None, split: str = "train") -> list[DataFile]:
    """Every data file of a corpus, typed, in the order records are numbered (see the module docstring).

    Args:
        source: one of ``SOURCES``, a dataset directory, or None (kinds by extension).
        data_files: a path, a glob pattern, a list of them or a split dict (relative to a directory ``source``).
        split: the split of a split dict, a ``DatasetDict`` directory or a directory of data files.

    Returns:
        the files; a ``save_to_disk`` directory gives its Arrow files.

    Raises:
        FileNotFoundError: a data file or pattern that matches nothing, naming it.
        ValueError: an unknown source, a missing split, or a file whose kind cannot be told or contradicts
            ``source``.
    """
    if isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
        directory = os.fspath(source)
        root = os.path.abspath(directory)
        saved = saved_dataset_files(directory, split)
        if saved is not None:
            if data_files is not None:
                raise ValueError(f"{directory!r} was written by save_to_disk: it takes no data_files")
            return [DataFile("arrow", path, root) for path in saved]
        if data_files is None:
            return [DataFile(_kind(p, None), p, root) for p in _directory_data_files(directory, split)]
        return [DataFile(_kind(p, None), p, root) for p in expand_data_files(data_files, split, root=directory)]
    if source is not None and source not in SOURCES:
        raise ValueError(
            f"source must be one of {SOURCES} (with data_files), a dataset directory or None, got {source!r}"
            + ("" if isinstance(source, str) else " (a datasets.Dataset object: use multimodal_chat_dataset)")
        )
    return [DataFile(_kind(path, source), path) for path in expand_data_files(data_files, split)]
