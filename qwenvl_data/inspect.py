"""Check a dataset before spending GPU hours: every record through the exact transform the run would use.

    python -m qwenvl_data.inspect --config configs/<name>.yaml [key=value ...] [--json PATH] [--num-workers N]

The config's ``tokenizer`` and ``dataset`` sections are instantiated as the recipes do (overrides as in
``tune run``), then every record is parsed, converted by its layout and transformed, in parallel over
processes; a streaming dataset is read once, in file order, through the same ``RecordProcessor``. Printed (and
written as JSON with ``--json``): records by layout, records refused for fields their layout does not read (by
field), tool turns (records with tool calls or results, and how many calls and results), unusable records by
cause with example ids, token lengths (p50/p90/p99/max, measured without the length limit) and how many exceed
``max_seq_len``, images and videos per sample, image sizes before and after ``smart_resize``.
Exit status: 0 when every record is usable, 1 when any is not, 2 when the config cannot be built, the
``--json`` path cannot be written or a worker process dies (one line on stderr naming the file and the cause).
A mixture (``dataset.mixture`` + ``dataset.weights``, or a list under ``dataset``) is inspected dataset by dataset:
the report covers them all, with the same counts per dataset (``by_source``) and each bad record's dataset.
"""

import argparse
import io
import itertools
import json
import multiprocessing
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml
from PIL import Image

from qwenvl_data._constants import PATCH_SIZE
from qwenvl_data.conversation._tools import calls_in
from qwenvl_data.datasets._shards import DamagedShard, ShardOrigins
from qwenvl_data.errors import DamagedShardError, SampleError, SampleTooLongError, UnreadFieldError

_ORIENTATION_TAG = 0x0112  # EXIF orientations 5-8 are a quarter turn: the transform sees width and height swapped
_CHUNK = 64  # records per task handed to a worker process
_IN_FLIGHT = 2  # tasks per worker submitted ahead: a stream is never read far ahead of the workers


@dataclass
class RecordReport:
    """What inspecting one record found (small and picklable: workers send these back)."""

    index: int | str  # a map-style record number, or a stream's "<shard>#<record number>"
    id: Any
    order: int = 0  # position in the read order (reports are sorted by it)
    layout: str | None = None
    cause: str | None = None  # None: usable
    error: str | None = None
    tokens: int | None = None  # untruncated length
    images: int = 0
    videos: int = 0
    sizes_before: list[tuple[int, int]] = field(default_factory=list)  # (width, height) per image
    sizes_after: list[tuple[int, int]] = field(default_factory=list)
    unread_fields: tuple[str, ...] = ()  # fields the layout does not read (the record was refused for them)
    metadata_fields: tuple[str, ...] = ()  # fields no layout reads, left out of the conversation
    tool_calls: int = 0  # <tool_call> blocks in assistant turns
    tool_results: int = 0  # tool (result) turns
    source: str | None = None  # the dataset of a mixture it belongs to (None: not a mixture)


class WorkerDiedError(RuntimeError):
    """A worker process ended without returning its records (killed by a signal, out of memory, os._exit)."""


def _image_size(value: Any) -> tuple[int, int]:
    """(width, height) the transform will see, from the file's header (no pixel decoding)."""
    if isinstance(value, Image.Image):
        return value.size
    with Image.open(io.BytesIO(value) if isinstance(value, bytes) else value) as image:
        width, height = image.size
        raw_exif = image.info.get("exif")  # in the header for JPEG/WebP/PNG; getexif() would decode a PNG
    exif = Image.Exif()
    if raw_exif:
        exif.load(raw_exif)
    return (height, width) if exif.get(_ORIENTATION_TAG) in (5, 6, 7, 8) else (width, height)


class RecordInspector:
    """Checks one record the way the dataset reads it: parse, layout, model transform, token budget.

    Args:
        dataset: a dataset built from records: ``ChatDataset`` (``source``, ``processor``) or
            ``StreamingChatDataset`` (``shards``, ``processor``).
        cfg: the run's config; its ``tokenizer`` section is built again without ``max_seq_len`` (once, when
            a sample reaches the limit) to measure how long such samples really are.

    Returns (on call with a task: a map-style record index, or a stream's ``(order, label, raw record)``):
        a ``RecordReport``; ``cause`` is None when the run would train on the record.
    """

    def __init__(self, dataset: Any, cfg: Any) -> None:
        self.processor, self.cfg = dataset.processor, cfg
        self.source = getattr(dataset, "source", None)  # map-style: workers read their records by index
        self.origin = self.source if self.source is not None else ShardOrigins(dataset.shards)
        self.max_seq_len = getattr(self.processor.model_transform, "max_seq_len", None)
        # Pixels per grid cell: the family's patch side (a transform of your own: Qwen2.5-VL's).
        self.patch_size = getattr(getattr(self.processor.model_transform, "image_transform", None), "patch_size",
                                  PATCH_SIZE)  # fmt: skip
        self._unlimited = None

    def _untruncated_length(self, sample: dict) -> int:
        if self._unlimited is None:
            from qwenvl_data.training._config import build

            self._unlimited = build(self.cfg, "tokenizer", max_seq_len=None)
        return len(self._unlimited(sample)["tokens"])

    def __call__(self, task: int | tuple[int, str, Any]) -> RecordReport:
        order, index, record = task if isinstance(task, tuple) else (task, task, None)
        report = RecordReport(index=index, id=index, order=order)
        try:
            if self.source is not None:
                record = self.source[index]
            if isinstance(record, DamagedShard):  # the rest of a stream's shard is unreadable
                report.id = os.path.basename(record.path)
                raise DamagedShardError(record.message())
            record = self.processor.parse(index, record, self.origin)
            if isinstance(record, dict):
                report.id = record.get("id", index)
            report.layout = self.processor.to_messages.layout_of(record)
            report.metadata_fields = tuple(self.processor.to_messages.metadata_of(record))
            sample, _ = self.processor.convert(index, record, self.origin)
            _count_tool_turns(report, sample["messages"])
            parts = [p for m in sample["messages"] for p in m.content]
            report.images = sum(p["type"] == "image" for p in parts)
            report.videos = sum(p["type"] == "video" for p in parts)
            try:
                report.sizes_before = [_image_size(p["content"]) for p in parts if p["type"] == "image"]
            except (OSError, ValueError):
                pass  # unreadable: the transform below names the cause
            try:
                out = self.processor.transform(dict(sample))
            except SampleTooLongError:
                if self.processor.model_transform is not None:
                    report.tokens = self._untruncated_length(dict(sample))
                raise
            report.tokens = len(out["tokens"])
            if self.max_seq_len is not None and report.tokens >= self.max_seq_len:
                report.tokens = self._untruncated_length(dict(sample))  # it may have been cut to fit
            grids = out.get("image_grid_thw")
            if grids is not None:
                side = self.patch_size
                report.sizes_after = [(int(w) * side, int(h) * side) for _, h, w in grids.tolist()]
        except UnreadFieldError as err:
            report.cause, report.error, report.unread_fields = err.cause, str(err), err.fields
        except SampleError as err:
            report.cause, report.error = err.cause, str(err)
        except Exception as err:  # a bug or an unforeseen input: reported, not fatal to the whole check
            report.cause, report.error = f"unexpected_{type(err).__name__}", str(err)
        return report


def _count_tool_turns(report: RecordReport, messages: list) -> None:
    """Tool calls (each a ``<tool_call>`` block in an assistant turn's text, ``_tools.calls_in``) and tool result
    turns of one converted record."""
    report.tool_calls = sum(
        calls_in(part["content"]) for message in messages if message.role == "assistant"
        for part in message.content if part["type"] == "text"
    )  # fmt: skip
    report.tool_results = sum(message.role == "tool" for message in messages)


_INSPECTOR: RecordInspector | None = None  # set before the worker processes fork; they inherit it


def _inspect_chunk(tasks: Sequence[Any]) -> list[RecordReport]:
    return [_INSPECTOR(task) for task in tasks]


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core; intra-op threads would oversubscribe


def _chunks(tasks: Iterable[Any]) -> Iterator[list[Any]]:
    iterator = iter(tasks)
    while chunk := list(itertools.islice(iterator, _CHUNK)):
        yield chunk


def _name(task: Any) -> Any:
    return task[1] if isinstance(task, tuple) else task


def _in_processes(chunks: Iterator[list[Any]], num_workers: int) -> Iterator[list[RecordReport]]:
    """``_inspect_chunk`` of every chunk over ``num_workers`` processes, at most ``_IN_FLIGHT`` chunks per
    worker submitted ahead (a stream is read as the workers need it).

    Raises:
        WorkerDiedError: a worker ended without an answer (``concurrent.futures`` notices at once, where
            ``multiprocessing.Pool`` would wait for the lost task forever), naming the records in flight.
    """
    context = multiprocessing.get_context("fork")  # the workers inherit _INSPECTOR
    pending: dict[Future, list[Any]] = {}
    with ProcessPoolExecutor(num_workers, mp_context=context, initializer=_worker_init) as pool:
        try:
            for chunk in itertools.chain(chunks, [None]):
                if chunk is not None:
                    pending[pool.submit(_inspect_chunk, chunk)] = chunk
                while pending and (chunk is None or len(pending) >= _IN_FLIGHT * num_workers):
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        yield future.result()
                        del pending[future]
        except BrokenProcessPool as err:
            tasks = [task for chunk in pending.values() for task in chunk]
            where = f" while records {_name(tasks[0])}..{_name(tasks[-1])} were in flight" if tasks else ""
            raise WorkerDiedError(
                f"a worker process died{where} (killed by a signal or out of memory?); "
                "rerun with --num-workers 1 to see the failure in this process"
            ) from err


def inspect_records(
    inspector: RecordInspector, tasks: Iterable[Any], num_workers: int, progress: bool = True,
    total: int | None = None,
) -> list[RecordReport]:
    """Every task (see ``RecordInspector``) through ``inspector``, over ``num_workers`` processes (1: this
    process), sorted by read order.

    Raises:
        WorkerDiedError: a worker process died (see ``_in_processes``).
    """
    from tqdm import tqdm

    global _INSPECTOR
    _INSPECTOR = inspector
    bar = tqdm(total=total, unit="rec", desc="inspect", disable=not progress, file=sys.stderr)
    reports: list[RecordReport] = []
    chunks = _chunks(tasks)
    results = map(_inspect_chunk, chunks) if num_workers <= 1 else _in_processes(chunks, num_workers)
    try:
        for chunk in results:
            reports += chunk
            bar.update(len(chunk))
    finally:
        bar.close()
    return sorted(reports, key=lambda r: r.order)


def stream_tasks(dataset: Any) -> Iterator[tuple[int, str, Any]]:
    """A streaming dataset's raw records, once, in file order: ``(order, "<shard>#<record number>", record)``."""
    from qwenvl_data.datasets._nodes import ShardRecordNode

    node = ShardRecordNode(dataset.shards, 0, 1, seed=0, shuffle_buffer_size=1, epoch=0)
    node.reset()
    for order, (label, record) in enumerate(node):
        yield order, label, record


def _percentiles(values: list[int], qs: Sequence[int]) -> dict[str, int]:
    if not values:
        return {}
    array = np.asarray(values)
    return {f"p{q}": int(np.percentile(array, q, method="higher")) for q in qs} | {"max": int(array.max())}


def _size_summary(sizes: list[tuple[int, int]]) -> dict[str, Any]:
    if not sizes:
        return {"count": 0}
    columns = {"width": [w for w, _ in sizes], "height": [h for _, h in sizes], "pixels": [w * h for w, h in sizes]}
    return {"count": len(sizes)} | {name: {"min": min(v), **_percentiles(v, (50,))} for name, v in columns.items()}


def summarize(reports: list[RecordReport], max_seq_len: int | None, examples: int = 5) -> dict[str, Any]:
    """The JSON report: counts by layout and cause, token/media statistics, every bad record by id and cause."""
    bad = [r for r in reports if r.cause is not None]
    by_cause: dict[str, dict[str, Any]] = {}
    for r in bad:
        entry = by_cause.setdefault(r.cause, {"count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < examples:
            entry["examples"].append(r.id)
    lengths = [r.tokens for r in reports if r.tokens is not None]
    usable = [r for r in reports if r.cause is None]
    tool_records = [r for r in reports if r.tool_calls or r.tool_results]
    return {
        "records": len(reports),
        "usable": len(usable),
        "unusable": len(bad),
        "layouts": dict(Counter(r.layout or "unknown" for r in reports).most_common()),
        "unread_fields": dict(Counter(name for r in reports for name in r.unread_fields).most_common()),
        "metadata_fields": dict(Counter(name for r in reports for name in r.metadata_fields).most_common()),
        "tool_turns": {
            "records": len(tool_records),
            "tool_calls": sum(r.tool_calls for r in tool_records),
            "tool_results": sum(r.tool_results for r in tool_records),
        },
        "unusable_by_cause": by_cause,
        "tokens": {
            **_percentiles(lengths, (50, 90, 99)),
            "max_seq_len": max_seq_len,
            "over_max_seq_len": None if max_seq_len is None else sum(n > max_seq_len for n in lengths),
        },
        "images_per_sample": {str(k): v for k, v in sorted(Counter(r.images for r in usable).items())},
        "videos_per_sample": {str(k): v for k, v in sorted(Counter(r.videos for r in usable).items())},
        "image_sizes": {
            "before_smart_resize": _size_summary([s for r in usable for s in r.sizes_before]),
            "after_smart_resize": _size_summary([s for r in usable for s in r.sizes_after]),
        },
        "unusable_records": [{"index": r.index, "id": r.id, "cause": r.cause, "error": r.error}
                             | ({"source": r.source} if r.source is not None else {}) for r in bad],
    }


SOURCE_SUMMARY_KEYS = (
    "records", "usable", "unusable", "layouts", "unread_fields", "metadata_fields", "tool_turns", "unusable_by_cause",
)


def summarize_mixture(reports: list[RecordReport], weights: dict[str, float], max_seq_len: int | None) -> dict:
    """``summarize`` of all the datasets of a mixture, plus ``by_source``: its record counts per dataset (by
    name, in the mixture's order, with its ``weight``)."""
    summary = summarize(reports, max_seq_len)
    summary["by_source"] = {}
    for name, weight in weights.items():
        own = summarize([r for r in reports if r.source == name], max_seq_len)
        summary["by_source"][name] = {"weight": weight} | {key: own[key] for key in SOURCE_SUMMARY_KEYS}
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The report as the lines printed to the console."""
    def counts(mapping: dict) -> str:
        return ", ".join(f"{k}: {v}" for k, v in mapping.items()) or "none"

    def sizes(s: dict) -> str:
        if not s["count"]:
            return "none"
        return (f"{s['count']} images; width {s['width']['min']}..{s['width']['max']} (p50 {s['width']['p50']}), "
                f"height {s['height']['min']}..{s['height']['max']} (p50 {s['height']['p50']}), "
                f"pixels p50 {s['pixels']['p50']}, max {s['pixels']['max']}")

    def records(s: dict) -> list[str]:
        tools = s["tool_turns"]
        return [
            f"records: {s['records']}, usable: {s['usable']}, unusable: {s['unusable']}",
            f"by layout: {counts(s['layouts'])}",
            f"refused for unread fields: {counts(s['unread_fields'])}",
            f"left out as metadata (no layout reads them): {counts(s['metadata_fields'])}",
            f"tool turns: {tools['records']} records, {tools['tool_calls']} tool calls, {tools['tool_results']} "
            "tool results",
            *(f"unusable [{cause}]: {entry['count']} (e.g. ids {', '.join(map(str, entry['examples']))})"
              for cause, entry in s["unusable_by_cause"].items()),
        ]  # fmt: skip

    tokens = summary["tokens"]
    lines = records(summary)
    for name, source in summary.get("by_source", {}).items():
        lines.append(f"dataset {name} (weight {source['weight']:g}): " + "; ".join(records(source)))
    if "max" in tokens:
        line = f"tokens: p50 {tokens['p50']}, p90 {tokens['p90']}, p99 {tokens['p99']}, max {tokens['max']}"
        if tokens["max_seq_len"] is not None:
            line += f"; {tokens['over_max_seq_len']} over max_seq_len {tokens['max_seq_len']}"
        lines.append(line)
    lines += [
        f"images per sample: {counts(summary['images_per_sample'])}",
        f"videos per sample: {counts(summary['videos_per_sample'])}",
        f"image sizes before smart_resize: {sizes(summary['image_sizes']['before_smart_resize'])}",
        f"image sizes after smart_resize: {sizes(summary['image_sizes']['after_smart_resize'])}",
    ]
    return "\n".join(lines)


def load_config(config: str, overrides: Sequence[str]) -> Any:
    """The recipe config with ``key=value`` overrides applied by ``tune run``'s own rules (also ``~key``).

    Raises:
        ValueError: a config file that cannot be read or is not YAML holding a mapping, or a bad override;
            the message names the file and the cause.
    """
    from omegaconf.errors import OmegaConfBaseException
    from torchtune.config._utils import _merge_yaml_and_cli_args

    try:
        with open(config) as f:
            settings = yaml.safe_load(f)
    except OSError as err:
        raise ValueError(f"config {config}: {err.strerror or err}") from err
    except yaml.YAMLError as err:
        raise ValueError(f"config {config} is not valid YAML: {err}") from err
    if not isinstance(settings, dict):
        raise ValueError(f"config {config} must hold a mapping of settings, got {type(settings).__name__}")
    try:
        return _merge_yaml_and_cli_args(argparse.Namespace(**settings), list(overrides))
    except (ValueError, OmegaConfBaseException) as err:
        raise ValueError(f"config {config} with overrides {list(overrides)}: {err}") from err


def build_datasets(config: str, overrides: Sequence[str]) -> tuple[list[tuple[str | None, float, Any]], Any]:
    """The datasets of a recipe config and ``key=value`` overrides, instantiated as the recipes do: ``(name,
    weight, dataset)`` for each dataset of a mixture, ``[(None, 1.0, dataset)]`` for one dataset; and the config.

    Raises:
        ValueError: a config that cannot be read or built (``load_config``, a mixture spelled wrong), or a dataset
            that is not built from records by one processor.
    """
    from qwenvl_data.training._config import build
    from qwenvl_data.training._mixture_config import mixture_entries

    cfg = load_config(config, overrides)
    transform = build(cfg, "tokenizer")
    entries = mixture_entries(cfg.get("dataset"))
    if entries is None:
        datasets = [(None, 1.0, build(cfg, "dataset", transform))]
    else:
        datasets = [(entry.name, entry.weight, entry.build(transform)) for entry in entries]
    for name, _, dataset in datasets:
        if not hasattr(dataset, "processor") or not (hasattr(dataset, "source") or hasattr(dataset, "shards")):
            raise ValueError(
                f"dataset {name or ''} ({type(dataset).__name__}) is not one dataset of records; inspect reads "
                "multimodal_chat_dataset and streaming_chat_dataset datasets"
            )
    return datasets, cfg


def _inspect_dataset(name: str | None, dataset: Any, cfg: Any, args: argparse.Namespace) -> tuple[list, Any]:
    """Every record of one dataset inspected (see ``inspect_records``), each report naming ``name``; and the
    inspector (its ``max_seq_len``).

    Raises:
        WorkerDiedError: a worker process died.
    """
    inspector = RecordInspector(dataset, cfg)
    if inspector.source is None:
        tasks: Iterable[Any] = stream_tasks(dataset)
        total = dataset.num_records()
    else:
        kept = getattr(dataset, "indices", None)  # a map-style dataset's filter_fn result
        tasks = list(range(len(dataset.source))) if kept is None else kept.tolist()
        total = len(tasks)
    reports = inspect_records(inspector, tasks, args.num_workers, progress=not args.no_progress, total=total)
    for report in reports:
        report.source = name
    return reports, inspector


def check_writable(path: str) -> None:
    """Fail now, not after the long work, when the JSON report could not be written to ``path``.

    Raises:
        OSError: naming the path and the cause (no file is left behind by the check).
    """
    if os.path.isdir(path):
        raise IsADirectoryError(f"--json {path}: is a directory")
    existed = os.path.exists(path)
    try:
        with open(path, "a"):
            pass
    except OSError as err:
        raise OSError(f"--json {path}: {err.strerror or err}") from err
    if not existed:
        os.remove(path)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qwenvl_data.inspect", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="recipe config (YAML) whose tokenizer and dataset to use")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, as for tune run")
    parser.add_argument("--json", dest="json_path", help="also write the report as JSON here")
    parser.add_argument(
        "--num-workers", type=int, default=min(4, os.cpu_count() or 1), help="processes (default min(4, cpus))"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        if args.json_path:
            check_writable(args.json_path)
        datasets, cfg = build_datasets(args.config, args.overrides)
    except (ValueError, OSError) as err:
        print(f"inspect: {_one_line(err)}", file=sys.stderr)
        return 2
    reports: list[RecordReport] = []
    try:
        for name, _, dataset in datasets:
            found, inspector = _inspect_dataset(name, dataset, cfg, args)
            reports += found
    except WorkerDiedError as err:
        print(f"inspect: {_one_line(err)}", file=sys.stderr)
        return 2
    if datasets[0][0] is None:
        summary = summarize(reports, inspector.max_seq_len)
    else:
        summary = summarize_mixture(reports, {name: weight for name, weight, _ in datasets}, inspector.max_seq_len)
    print(format_summary(summary))
    if args.json_path:
        try:
            with open(args.json_path, "w") as f:
                json.dump(summary, f, indent=2, default=str)
        except OSError as err:
            print(f"inspect: --json {args.json_path}: {err.strerror or err}", file=sys.stderr)
            return 2
    return 0 if summary["unusable"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
