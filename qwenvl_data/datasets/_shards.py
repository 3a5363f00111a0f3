"""A corpus as a list of shards read lazily, record by record, for the streaming pipeline.

A shard is the unit handed to one reader: a JSON Lines file, a JSON array file (checked whole, so keep those
small), one parquet row group, one Arrow file of a ``save_to_disk`` dataset directory, or one WebDataset-style
tar file. Which files, and of which kind, is ``resolve_data_files``'s answer (the map-style rule too); listing
shards reads metadata only (parquet footers, ``state.json``); records are read in order when a reader reaches
the shard and never kept beyond the shuffle buffer.

WebDataset tars: consecutive members sharing a key (the member name up to the first dot of its base name)
form one sample: ``<key>.json`` holds the record; media members (``<key>.jpg``, ``<key>.png``, ``<key>.mp4``,
...) replace the record's strings that name them (``"image": "000001.jpg"`` or the bare extension
``"jpg"``), or, when the record names none, fill its ``images`` / ``videos`` (LLaVA: ``image`` / ``video``)
in member order.
"""

import json
import os
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from qwenvl_data.conversation._media import FRAME_EXTENSIONS, VIDEO_EXTENSIONS
from qwenvl_data.datasets._data_files import DataFile, resolve_data_files
from qwenvl_data.datasets._json_files import json_lines, line_location, read_array, record_spans

_ROWS_PER_CHUNK = 256  # Arrow rows converted to Python at a time: bounds memory for image-bearing rows


@dataclass(frozen=True)
class Shard:
    """One lazily read piece of a corpus.

    Args:
        kind: ``"jsonl"`` | ``"json"`` | ``"parquet"`` | ``"arrow"`` | ``"tar"``.
        path: the file.
        row_group: the parquet row group (parquet only).
        media_dir: where its records' relative media paths resolve by default (``DataFile.media_dir``; None:
            the file's own directory).
    """

    kind: str
    path: str
    row_group: int | None = None
    media_dir: str | None = None

    def __post_init__(self) -> None:
        if self.media_dir is None:
            object.__setattr__(self, "media_dir", os.path.dirname(os.path.abspath(self.path)))

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

    def location(self, number: int) -> str | None:
        """Where record ``number`` of a JSON shard starts (``"<path> line <n>"``, as the map-style index says);
        None for other kinds, whose records are rows, not text."""
        if self.kind not in ("jsonl", "json"):
            return None
        return line_location(self.path, record_spans(self.path)[number][0])


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
    for _, line in json_lines(shard.path):
        yield line


def _json_records(shard: Shard) -> Iterator[bytes]:
    data, spans = read_array(shard.path)
    for start, end in spans:
        yield data[start:end]


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


def list_shards(source: str | os.PathLike | None, data_files: Any = None, split: str = "train") -> list[Shard]:
    """Every shard of a corpus, in a fixed order (the order sharding and shuffling start from).

    Args:
        source, data_files, split: as for ``resolve_data_files`` (``"jsonl"`` / ``"json"`` / ``"parquet"`` /
            ``"arrow"`` / ``"webdataset"`` with ``data_files``, a dataset directory, or None: kinds by extension).

    Raises:
        FileNotFoundError: a data file or pattern that matches nothing.
        ValueError: an unknown source or a file whose kind cannot be told or contradicts it.
    """
    return shards_of(resolve_data_files(source, data_files, split))


def shards_of(files: Sequence[DataFile]) -> list[Shard]:
    """The shards of resolved data files: one per file, one per row group of a parquet file."""
    shards = []
    for file in files:
        if file.kind == "parquet":
            import pyarrow.parquet as pq

            with pq.ParquetFile(file.path) as parquet:
                shards.extend(
                    Shard("parquet", file.path, g, file.media_dir) for g in range(parquet.metadata.num_row_groups)
                )
        else:
            shards.append(Shard(file.kind, file.path, media_dir=file.media_dir))
    return shards


def shard_labels(shards: Sequence[Shard]) -> list[str]:
    """How streamed records name their shard (``<label>#<record number>``): the shard's ``name``, or, where two
    shards share it (``a/part.jsonl``, ``b/part.jsonl``), its path, so that every label names one shard."""
    uses = Counter(shard.name for shard in shards)
    return [
        shard.name if uses[shard.name] == 1 else shard.name.replace(os.path.basename(shard.path), shard.path, 1)
        for shard in shards
    ]


class ShardOrigins:
    """The ``RecordOrigin`` of streamed records, labelled ``<shard label>#<record number>`` (``shard_labels``).

    Args:
        shards: the corpus, in ``list_shards`` order.
    """

    def __init__(self, shards: Sequence[Shard]) -> None:
        self.by_label = dict(zip(shard_labels(shards), shards))

    def _shard(self, label: str) -> tuple[Shard, int]:
        name, _, number = label.rpartition("#")
        return self.by_label[name], int(number)

    def location(self, label: str) -> str | None:
        """``"<path> line <n>"`` for a record of a JSON shard (as the map-style index says), else None."""
        shard, number = self._shard(label)
        return shard.location(number)

    def media_dir(self, label: str) -> str:
        """The directory the record's relative media paths resolve under by default (its shard's)."""
        return self._shard(label)[0].media_dir


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
