"""Check a dataset before spending GPU hours: every record through the exact transform the run would use.

    python -m qwenvl_data.inspect --config configs/<name>.yaml [key=value ...] [--json PATH] [--num-workers N]

The config's ``tokenizer`` and ``dataset`` sections are instantiated as the recipes do (overrides as in
``tune run``), then every record is parsed, converted by its layout and transformed, in parallel over
processes. Printed (and written as JSON with ``--json``): records by layout, unusable records by cause with
example ids, token lengths (p50/p90/p99/max, measured without the length limit) and how many exceed
``max_seq_len``, images and videos per sample, image sizes before and after ``smart_resize``.
Exit status: 0 when every record is usable, 1 when any is not, 2 when the config cannot be built.
"""

import argparse
import io
import json
import multiprocessing
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml
from PIL import Image

from qwenvl_data._constants import PATCH_SIZE
from qwenvl_data.errors import SampleError, SampleTooLongError

_ORIENTATION_TAG = 0x0112  # EXIF orientations 5-8 are a quarter turn: the transform sees width and height swapped
_CHUNK = 64  # records per task handed to a worker process


@dataclass
class RecordReport:
    """What inspecting one record found (small and picklable: workers send these back)."""

    index: int
    id: Any
    layout: str | None = None
    cause: str | None = None  # None: usable
    error: str | None = None
    tokens: int | None = None  # untruncated length
    images: int = 0
    videos: int = 0
    sizes_before: list[tuple[int, int]] = field(default_factory=list)  # (width, height) per image
    sizes_after: list[tuple[int, int]] = field(default_factory=list)


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
        dataset: a dataset built from records (``ChatDataset`` / ``StreamingChatDataset``: ``source``,
            ``processor``).
        cfg: the run's config; its ``tokenizer`` section is built again without ``max_seq_len`` (once, when
            a sample reaches the limit) to measure how long such samples really are.

    Returns (on call with a record index):
        a ``RecordReport``; ``cause`` is None when the run would train on the record.
    """

    def __init__(self, dataset: Any, cfg: Any) -> None:
        self.source, self.processor, self.cfg = dataset.source, dataset.processor, cfg
        self.max_seq_len = getattr(self.processor.model_transform, "max_seq_len", None)
        self._unlimited = None

    def _untruncated_length(self, sample: dict) -> int:
        if self._unlimited is None:
            from qwenvl_data.training._config import build

            self._unlimited = build(self.cfg, "tokenizer", max_seq_len=None)
        return len(self._unlimited(sample)["tokens"])

    def __call__(self, index: int) -> RecordReport:
        report = RecordReport(index=index, id=index)
        try:
            record = self.processor.parse(index, self.source[index], self.source)
            if isinstance(record, dict):
                report.id = record.get("id", index)
            report.layout = self.processor.to_messages.layout_of(record)
            sample, _ = self.processor.convert(index, record, self.source)
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
                report.sizes_after = [(int(w) * PATCH_SIZE, int(h) * PATCH_SIZE) for _, h, w in grids.tolist()]
        except SampleError as err:
            report.cause, report.error = err.cause, str(err)
        except Exception as err:  # a bug or an unforeseen input: reported, not fatal to the whole check
            report.cause, report.error = f"unexpected_{type(err).__name__}", str(err)
        return report


_INSPECTOR: RecordInspector | None = None  # set before the worker processes fork; they inherit it


def _inspect_chunk(indices: Sequence[int]) -> list[RecordReport]:
    return [_INSPECTOR(i) for i in indices]


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core; intra-op threads would oversubscribe


def inspect_records(
    inspector: RecordInspector, indices: Sequence[int], num_workers: int, progress: bool = True
) -> list[RecordReport]:
    """Every record of ``indices`` through ``inspector``, over ``num_workers`` processes (1: this process)."""
    from tqdm import tqdm

    global _INSPECTOR
    _INSPECTOR = inspector
    chunks = [indices[i : i + _CHUNK] for i in range(0, len(indices), _CHUNK)]
    bar = tqdm(total=len(indices), unit="rec", desc="inspect", disable=not progress, file=sys.stderr)
    reports: list[RecordReport] = []
    results: Iterator[list[RecordReport]]
    if num_workers <= 1:
        results = map(_inspect_chunk, chunks)
        pool = None
    else:
        pool = multiprocessing.get_context("fork").Pool(num_workers, initializer=_worker_init)
        results = pool.imap_unordered(_inspect_chunk, chunks)
    try:
        for chunk in results:
            reports += chunk
            bar.update(len(chunk))
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    return sorted(reports, key=lambda r: r.index)


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
    return {
        "records": len(reports),
        "usable": len(usable),
        "unusable": len(bad),
        "layouts": dict(Counter(r.layout or "unknown" for r in reports).most_common()),
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
        "unusable_records": [{"index": r.index, "id": r.id, "cause": r.cause, "error": r.error} for r in bad],
    }


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

    tokens = summary["tokens"]
    lines = [
        f"records: {summary['records']}, usable: {summary['usable']}, unusable: {summary['unusable']}",
        f"by layout: {counts(summary['layouts'])}",
    ]
    for cause, entry in summary["unusable_by_cause"].items():
        lines.append(f"unusable [{cause}]: {entry['count']} (e.g. ids {', '.join(map(str, entry['examples']))})")
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


def build_dataset(config: str, overrides: Sequence[str]) -> tuple[Any, Any]:
    """(dataset, cfg) from a recipe config and ``key=value`` overrides, instantiated as the recipes do.

    Raises:
        ValueError: a config section that cannot be built, or a dataset that is not built from records.
    """
    from torchtune.config._utils import _merge_yaml_and_cli_args  # tune run's own override rules (also ~key)

    from qwenvl_data.training._config import build

    with open(config) as f:
        cfg = _merge_yaml_and_cli_args(argparse.Namespace(**yaml.safe_load(f)), list(overrides))
    transform = build(cfg, "tokenizer")
    dataset = build(cfg, "dataset", transform)
    if not (hasattr(dataset, "source") and hasattr(dataset, "processor")):
        raise ValueError(
            f"dataset {cfg.dataset._component_} is not built from records; inspect reads "
            "multimodal_chat_dataset and streaming_chat_dataset"
        )
    return dataset, cfg


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
        dataset, cfg = build_dataset(args.config, args.overrides)
    except (ValueError, OSError) as err:
        print(f"inspect: {err}", file=sys.stderr)
        return 2
    inspector = RecordInspector(dataset, cfg)
    kept = getattr(dataset, "indices", None)  # a map-style dataset's filter_fn result
    indices = list(range(len(dataset.source))) if kept is None else kept.tolist()
    reports = inspect_records(inspector, indices, args.num_workers, progress=not args.no_progress)
    summary = summarize(reports, inspector.max_seq_len)
    print(format_summary(summary))
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(summary, f, indent=2, default=str)
    return 0 if summary["unusable"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
