"""A corpus as a list of shards read lazily, record by record, for the streaming pipeline.

A shard is the unit handed to one reader: a JSON Lines file, a JSON list file (parsed whole, so keep
those small), one parquet row group, one Arrow file of a ``save_to_disk`` dataset directory, or one
WebDataset-style tar file. Listing shards reads metadata only (parquet footers, ``state.json``); records
are read in order when a reader reaches the shard and never kept beyond the shuffle buffer.

WebDataset tars: consecutive members sharing a key (the member name up to the first dot of its base name)
form one sample: ``<key>.json`` holds the record; media members (``<key>.jpg``, ``<key>.png``, ``<key>.mp4``,
...) replace the record's strings that name them (``"image": "000001.jpg"`` or the bare extension
``"jpg"``), or, when the record names none, fill its ``images`` / ``videos`` (LLaVA: ``image`` / ``video``)
in member order.
"""

import glob
import json
import os
import tarfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qwenvl_data.conversation._media import FRAME_EXTENSIONS, VIDEO_EXTENSIONS

STREAM_SOURCES = ("jsonl", "json", "parquet", "webdataset")
_KIND_OF_EXTENSION = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".tar": "tar"}
_ROWS_PER_CHUNK = 256  # Arrow rows converted to Python at a time: bounds memory for image-bearing rows


@dataclass(frozen=True)
class Shard:
    """One lazily read piece of a corpus.

    Args:
        kind: ``"jsonl"`` | ``"json"`` | ``"parquet"`` | ``"arrow"`` | ``"tar"``.
        path: the file.
        row_group: the parquet row group (parquet only).
    """

    kind: str
    path: str
    row_group: int | None = None

    @property
    def name(self) -> str:
        """How errors name the shard: the file's base name, plus the row group for parquet."""
        base = os.path.basename(self.path)
        return base if self.row_group is None else f"{base}[row group {self.row_group}]"

    def records(self) -> Iterator[Any]:
        """The shard's raw records in file order: JSON text (bytes) or dicts; where the file cannot be read on
        (truncated, not of its kind), one ``DamagedShard`` last, so the loss is a counted skip or an error
        naming the shard, never silence."""
        read = 0
        try:
            for record in _READERS[self.kind](self):
                yield record
                read += 1
        except _READ_ERRORS as error:
            yield DamagedShard(self.path, read, f"{type(error).__name__}: {error}")


@dataclass(frozen=True)
class DamagedShard:
    """Where a shard stopped being readable: after ``records_read`` records, for ``reason``; how many records
    the rest held is unknown."""

    path: str
    records_read: int
    reason: str

    def message(self) -> str:
        return (f"shard {self.path} is damaged after {self.records_read} records ({self.reason}); the rest of it "
                "was not read (how many records it held is unknown)")  # fmt: skip


def _jsonl_records(shard: Shard) -> Iterator[bytes]:
    with open(shard.path, "rb") as f:
        for line in f:
            if line.strip():  # blank lines (e.g. a trailing one) are not records
                yield line


def _json_records(shard: Shard) -> Iterator[Any]:
    with open(shard.path, "rb") as f:
        try:
            data = json.load(f)
        except ValueError as err:
            raise ValueError(f"{shard.path}: not a JSON file ({err}); name JSON Lines files *.jsonl") from err
    if not isinstance(data, list):
        raise ValueError(f"{shard.path}: a JSON data file must hold a list of records, got {type(data).__name__}")
    yield from data


def _batches_as_rows(batches: Any) -> Iterator[dict]:
    for batch in batches:
        for start in range(0, batch.num_rows, _ROWS_PER_CHUNK):
            yield from batch.slice(start, _ROWS_PER_CHUNK).to_pylist()


def _parquet_records(shard: Shard) -> Iterator[dict]:
    import pyarrow.parquet as pq

    with pq.ParquetFile(shard.path) as parquet:
        yield from _batches_as_rows(parquet.iter_batches(batch_size=_ROWS_PER_CHUNK, row_groups=[shard.row_group]))


def _arrow_records(shard: Shard) -> Iterator[dict]:
    import pyarrow as pa

    with pa.memory_map(shard.path) as mapped:  # HF datasets write the Arrow stream format
        yield from _batches_as_rows(pa.ipc.open_stream(mapped))


def _sample_key(member_name: str) -> tuple[str, str]:
    """WebDataset's split of a member name into (key, extension): the extension starts at the base name's first dot."""
    directory, base = os.path.split(member_name)
    stem, dot, extension = base.partition(".")
    return os.path.join(directory, stem), extension.lower() if dot else ""


def _tar_records(shard: Shard) -> Iterator[Any]:
    """Samples in member order. A tar cut inside a member fails in tarfile; one cut between two members ends
    like a complete one there, so an uncompressed tar must also end with its end-of-archive zero block. The
    sample being assembled when the damage is found (it may lack members) is not yielded."""
    key, members = None, {}
    with open(shard.path, "rb") as file, tarfile.open(fileobj=file, mode="r|*") as tar:  # sequential, read once
        for member in tar:
            if not member.isfile():
                continue
            member_key, extension = _sample_key(member.name)
            if member_key != key and members:
                yield _tar_sample(shard, key, members)
                members = {}
            key = member_key
            members[extension] = (os.path.basename(member.name), tar.extractfile(member).read())
        uncompressed = getattr(tar.fileobj, "comptype", "tar") == "tar"
        if uncompressed and os.fstat(file.fileno()).st_size - tar.offset < tarfile.BLOCKSIZE:
            raise tarfile.ReadError(f"no end-of-archive block after byte {tar.offset}: cut off after a member")
    if members:
        yield _tar_sample(shard, key, members)


def _substitute(value: Any, media: dict[str, bytes], used: set[str]) -> Any:
    """``value`` with every string that names a media member replaced by that member's bytes."""
    if isinstance(value, str) and value in media:
        used.add(value)
        return media[value]
    if isinstance(value, list):
        return [_substitute(v, media, used) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, media, used) for k, v in value.items()}
    return value


def _tar_sample(shard: Shard, key: str, members: dict[str, tuple[str, bytes]]) -> Any:
    """One WebDataset sample as a record with its media as bytes (raw JSON text when the JSON is missing or broken,
    so that the sample processor reports it under ``on_error`` like any malformed record)."""
    if "json" not in members:  # the processor reports it: a record with no conversation, named by its key
        return {"id": key, "tar_members": sorted(name for name, _ in members.values())}
    text = members.pop("json")[1]
    try:
        record = json.loads(text)
    except ValueError:
        return text  # the processor reports the JSON error
    if not isinstance(record, dict):
        return text
    record.setdefault("id", key)
    media = {}
    for extension, (file_name, data) in members.items():
        media[file_name], media[extension] = data, data
    used: set[str] = set()
    record = _substitute(record, media, used)
    if not used:
        ordered = sorted(members.values())
        images = [data for name, data in ordered if name.lower().endswith(FRAME_EXTENSIONS)]
        videos = [data for name, data in ordered if name.lower().endswith(VIDEO_EXTENSIONS)]
        llava = "conversations" in record
        if images:
            record.setdefault("image" if llava else "images", images)
        if videos:
            record.setdefault("video" if llava else "videos", videos)
    return record


# What reading a damaged file raises: tarfile's errors, a cut gzip/zlib stream, pyarrow's ArrowInvalid (a
# ValueError), a JSON file that is not JSON, a file gone or unreadable.
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError, ValueError)

_READERS = {
    "jsonl": _jsonl_records,
    "json": _json_records,
    "parquet": _parquet_records,
    "arrow": _arrow_records,
    "tar": _tar_records,
}


def _expand(data_files: Any) -> list[str]:
    """Paths (globs expanded, sorted) from a path, a list of paths, or an OmegaConf list."""
    if data_files is None:
        return []
    items = [data_files] if isinstance(data_files, (str, os.PathLike)) else list(data_files)
    paths = []
    for item in items:
        item = os.fspath(item)
        matches = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
        if not matches:
            raise FileNotFoundError(f"data_files pattern {item!r} matches no file")
        paths.extend(matches)
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"data file {path!r} does not exist")
    return paths


def _file_kind(path: str, source: str | None) -> str:
    extension = os.path.splitext(path)[1].lower()
    kind = _KIND_OF_EXTENSION.get(extension)
    if source == "jsonl" or (source == "json" and kind in ("jsonl", None)):
        return "jsonl" if source == "jsonl" or kind == "jsonl" else "json"
    if source == "webdataset":
        return "tar"
    if source is not None and source != kind:
        raise ValueError(f"data file {path!r} does not look like source={source!r} (extension {extension!r})")
    if kind is None:
        raise ValueError(f"cannot tell the format of {path!r}: pass source= one of {STREAM_SOURCES}")
    return kind


def _saved_dataset_shards(directory: str, split: str) -> list[Shard]:
    """The Arrow files of a ``save_to_disk`` directory (a ``DatasetDict``'s ``split`` subdirectory)."""
    if os.path.exists(os.path.join(directory, "dataset_dict.json")):
        splits = json.loads(open(os.path.join(directory, "dataset_dict.json")).read())["splits"]
        if split not in splits:
            raise ValueError(f"dataset directory {directory!r} has splits {splits}, not {split!r}")
        directory = os.path.join(directory, split)
    state_path = os.path.join(directory, "state.json")
    if not os.path.exists(state_path):
        raise ValueError(f"{directory!r} is not a dataset directory written by save_to_disk (no state.json)")
    with open(state_path) as f:
        files = [entry["filename"] for entry in json.load(f)["_data_files"]]
    return [Shard("arrow", os.path.join(directory, name)) for name in files]


def list_shards(source: str | os.PathLike | None, data_files: Any = None, split: str = "train") -> list[Shard]:
    """Every shard of a corpus, in a fixed order (the order sharding and shuffling start from).

    Args:
        source: ``"jsonl"`` / ``"json"`` / ``"parquet"`` / ``"webdataset"`` with ``data_files``, a local
            dataset directory written by ``datasets``' ``save_to_disk``, or None to tell the format from
            each file's extension (``.jsonl``, ``.json``, ``.parquet``, ``.tar``).
        data_files: a path, a glob pattern or a list of them.
        split: the split of a saved ``DatasetDict``.

    Raises:
        FileNotFoundError: a data file or pattern that matches nothing.
        ValueError: an unknown source or a file whose extension contradicts it.
    """
    if isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
        return _saved_dataset_shards(os.fspath(source), split)
    if source is not None and source not in STREAM_SOURCES:
        raise ValueError(
            f"streaming source must be one of {STREAM_SOURCES} (with data_files) or a dataset directory "
            f"written by save_to_disk, got {source!r} (in-memory datasets: use multimodal_chat_dataset)"
        )
    if isinstance(data_files, Mapping):
        data_files = data_files[split]
    paths = _expand(data_files)
    if not paths:
        raise ValueError(f"source {source!r} needs data_files")
    shards = []
    for path in paths:
        kind = _file_kind(path, source)
        if kind == "parquet":
            import pyarrow.parquet as pq

            with pq.ParquetFile(path) as parquet:
                shards.extend(Shard("parquet", path, g) for g in range(parquet.metadata.num_row_groups))
        else:
            shards.append(Shard(kind, path))
    return shards


def count_records(shards: Sequence[Shard]) -> int | None:
    """The number of records when metadata tells it without reading the records (parquet, Arrow), else None."""
    if not shards or any(shard.kind not in ("parquet", "arrow") for shard in shards):
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    total = 0
    for shard in shards:
        if shard.kind == "parquet":
            with pq.ParquetFile(shard.path) as parquet:
                total += parquet.metadata.row_group(shard.row_group).num_rows
        else:
            with pa.memory_map(shard.path) as mapped:
                total += pa.ipc.open_stream(mapped).read_all().num_rows  # memory-mapped: no copy
    return total
