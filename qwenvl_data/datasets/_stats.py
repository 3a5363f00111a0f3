"""Skips: ``SkippedRecord``, the one form a skipped record takes from the dataset to the reports;
``SkipCounts``, counters of them by cause that stay correct when DataLoader workers process the samples; and
``SkipReport``, what those counters show (console line, metrics.json entry, metric-logger scalars).

Each worker is its own process holding a pickled copy of the dataset, so plain attributes would count
per copy and be lost. The counts and example ids live in shared-memory tensors created in the dataset's
``__init__``; each DataLoader worker writes only its own row (row 0 is the main process), so no two
processes ever update the same cell and no cross-process lock is needed.
"""

import dataclasses
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import get_worker_info

from qwenvl_data.errors import SampleError, UnexpectedSampleError, sample_name

EXAMPLE_BYTES = 96  # an example id (and exception type) is cut to this many UTF-8 bytes
ERROR_BYTES = 160  # the first error message of each cause is cut to this many UTF-8 bytes
# The sample key under which a mixture read by the recipes names the dataset a sample was drawn from (the
# collators read only their own keys); a ``SkippedRecord`` carries it as ``source``.
MIXTURE_SOURCE_KEY = "mixture_source"


@dataclass(frozen=True)
class SkippedRecord:
    """Why record ``index`` gave no sample (under ``on_error="skip"``): what a training loop counts and shows.

    ``example`` is the one way reports name the record: its id; without one (e.g. a malformed JSON line) where
    it is (``train.jsonl line 7``, or a stream's ``shard#record``), else ``#index``; with the exception type for
    an unexpected error. ``source``: the dataset of a mixture it was drawn from (None outside a mixture).
    """

    index: int | str | None  # None: not known (a sample refused after it was read, e.g. by the collator)
    sample_id: Any
    cause: str
    message: str
    location: str | None = None
    source: str | None = None

    @classmethod
    def from_error(cls, index: int | str | None, sample_id: Any, error: SampleError,
                   location: str | None = None) -> "SkippedRecord":  # fmt: skip
        return cls(index, sample_id, error.cause, str(error), location)

    @classmethod
    def refused(cls, sample: Mapping[str, Any], error: SampleError) -> "SkippedRecord":
        """A sample read as usable and refused afterwards (the collator's ``error``), named by its id (and its
        mixture dataset, ``MIXTURE_SOURCE_KEY``)."""
        return cls(None, sample.get("id"), error.cause, str(error), source=sample.get(MIXTURE_SOURCE_KEY))

    @classmethod
    def unexplained(cls, index: int) -> "SkippedRecord":
        """Record ``index`` of a dataset that skips by returning None, without saying why."""
        return cls(index, None, SampleError.cause, "skipped by the dataset")

    @property
    def short_message(self) -> str:
        """The error message without the sample's name (reports name it by ``example``)."""
        shown = re.escape(sample_name(None, self.sample_id).removeprefix("sample "))  # "(id)" or "(id unknown)"
        return re.sub(rf"^sample (?:\S+ )?{shown}: ", "", self.message)

    @property
    def example(self) -> str:
        if self.sample_id is not None:
            name = f"{self.sample_id}"
        elif self.location is not None:
            name = self.location
        elif self.index is None:
            name = "unknown id"
        else:
            name = f"#{self.index}" if isinstance(self.index, int) else str(self.index)
        if self.cause == UnexpectedSampleError.cause:
            name += f" ({self.message.split(':', 1)[0]})"
        return name


@dataclass(frozen=True)
class SkipReport:
    """Skips by cause with the first record names and the first error message of each (``{cause: {"count",
    "examples", "first_error"}}``, the message cut to ``ERROR_BYTES``), how many
    records were read (None where the counter does not know: a dataset counts only what it skipped), and how
    often the data ran out and was read again (``passes_started``: then ``read`` and the skips count a record
    once per pass that read it); in a mixture, ``by_source`` holds the same for each of its datasets, by name
    (in the mixture's order; they add up to the totals)."""

    by_cause: dict[str, dict[str, Any]] = field(default_factory=dict)
    read: int | None = None
    passes_started: int = 0
    by_source: dict[str, "SkipReport"] = field(default_factory=dict)

    @property
    def skipped(self) -> int:
        return sum(entry["count"] for entry in self.by_cause.values())

    @classmethod
    def merged(cls, reports: Iterable["SkipReport"], max_examples: int) -> "SkipReport":
        """The sum of ``reports`` (e.g. one per rank): counts added, the first ``max_examples`` distinct names;
        per source likewise."""
        by_cause: dict[str, dict[str, Any]] = {}
        sources: dict[str, list[SkipReport]] = {}
        read = passes = 0
        for report in reports:
            read += report.read or 0
            passes += report.passes_started
            for cause, entry in report.by_cause.items():
                merged = by_cause.setdefault(cause, {"count": 0, "examples": [], "first_error": None})
                merged["count"] += entry["count"]
                merged["first_error"] = merged["first_error"] or entry.get("first_error")
                new = [e for e in entry["examples"] if e not in merged["examples"]]
                merged["examples"] = (merged["examples"] + new)[:max_examples]
            for name, source in report.by_source.items():
                sources.setdefault(name, []).append(source)
        by_source = {name: cls.merged(parts, max_examples) for name, parts in sources.items()}
        return cls(by_cause, read, passes, by_source)

    def as_dict(self) -> dict[str, Any]:
        """metrics.json's form: ``{"read", "skipped", "passes_started", "by_cause"}``, and in a mixture
        ``"by_source": {name: the same}``."""
        entry = {"read": self.read, "skipped": self.skipped, "passes_started": self.passes_started,
                 "by_cause": self.by_cause}  # fmt: skip
        if self.by_source:
            entry["by_source"] = {name: source.as_dict() for name, source in self.by_source.items()}
        return entry

    def describe(self) -> str:
        """One line for the console: ``skipped 3 of 90 records: cause=n (e.g. id, id; first: <its error>); ...``."""
        noun = "record" if self.skipped == 1 else "records"
        counted = noun if self.read is None else f"of {self.read} records"
        parts = [f"{cause}={e['count']}" + _why(e) for cause, e in self.by_cause.items()]
        passes = self.passes_started
        repeated = (f" (the data ran out and was read again {passes} time{'s' if passes > 1 else ''}: a record "
                    "counts once per pass that read it)") if passes else ""  # fmt: skip
        return f"skipped {self.skipped} {counted}{repeated}" + (": " + "; ".join(parts) if parts else "")

    def brief(self) -> str:
        """``describe()`` with the restarts as ``; restarted 2 times``, for one dataset of a mixture."""
        passes = self.passes_started
        restarts = f"; restarted {passes} time{'s' if passes > 1 else ''}" if passes else ""
        return dataclasses.replace(self, passes_started=0).describe() + restarts

    def source_lines(self) -> list[str]:
        """One console line per dataset of a mixture (none outside one): ``  <name>: skipped 1 of 40 records:
        bad_image=1 (e.g. r3); restarted 2 times``."""
        return [f"  {name}: {source.brief()}" for name, source in self.by_source.items()]

    def scalars(self) -> dict[str, float]:
        """Flat scalars for a metric logger: ``skipped/<cause>``, ``skipped/total``, ``records_read`` and
        ``data_passes_restarted``."""
        scalars = {f"skipped/{cause}": float(entry["count"]) for cause, entry in self.by_cause.items()}
        return {**scalars, "skipped/total": float(self.skipped), "records_read": float(self.read or 0),
                "data_passes_restarted": float(self.passes_started)}  # fmt: skip


def _why(entry: dict[str, Any]) -> str:
    """`` (e.g. id, id; first: <message>)`` of one cause's entry (what is known of it)."""
    said = [", ".join(entry["examples"])] if entry["examples"] else []
    said += [f"first: {entry['first_error']}"] if entry.get("first_error") else []
    return f" (e.g. {'; '.join(said)})" if entry["examples"] else (f" ({said[0]})" if said else "")


def _error_classes() -> list[type[SampleError]]:
    """``SampleError`` and all its subclasses, breadth first (in definition order within a level)."""
    classes, stack = [], [SampleError]
    while stack:
        cls = stack.pop(0)
        classes.append(cls)
        stack.extend(cls.__subclasses__())
    return classes


def _all_causes() -> tuple[str, ...]:
    """Every ``cause`` defined by ``SampleError`` and its subclasses, in definition order."""
    return tuple(dict.fromkeys(cls.cause for cls in _error_classes()))


def _counted_cause(cause: str, known: dict[str, int]) -> str:
    """``cause``, where the cause of a ``SampleError`` subclass defined after the counters were made counts as
    its nearest known parent's (an unknown name as the base ``SampleError``'s)."""
    if cause in known:
        return cause
    cls = next((c for c in _error_classes() if c.cause == cause), SampleError)
    return next(parent.cause for parent in cls.__mro__ if getattr(parent, "cause", None) in known)


class SkipCounts:
    """Counts skipped samples by cause, keeping the first ids of each, across the main process and its
    DataLoader workers.

    Args:
        max_workers: DataLoader workers that can write (one row each, plus the main process).
        max_examples: example ids kept per cause and process.
    """

    def __init__(self, max_workers: int = 64, max_examples: int = 5) -> None:
        self.causes = _all_causes()
        self._column = {cause: i for i, cause in enumerate(self.causes)}
        rows, columns = max_workers + 1, len(self.causes)
        self._counts = torch.zeros(rows, columns, dtype=torch.int64).share_memory_()
        self._examples = torch.zeros(rows, columns, max_examples, EXAMPLE_BYTES, dtype=torch.uint8).share_memory_()
        self._errors = torch.zeros(rows, columns, ERROR_BYTES, dtype=torch.uint8).share_memory_()  # the first, per row
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        del state["_lock"]  # a thread lock cannot be pickled; each process gets its own
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def add(self, skipped: SkippedRecord) -> None:
        """Count one skipped record under its cause, keeping its name (``example``) among the first few of
        that cause, and its error message when it is the cause's first in this process."""
        column = self._column[_counted_cause(skipped.cause, self._column)]
        info = get_worker_info()
        row = 0 if info is None else info.id + 1
        if row >= self._counts.shape[0]:
            raise RuntimeError(f"SkipCounts holds {self._counts.shape[0] - 1} worker rows; worker {info.id} has none")
        with self._lock:  # threads of one process (e.g. a thread-based ParallelMapper) share a row
            text = skipped.example.encode(errors="backslashreplace")  # a lone surrogate (from JSON) as \\udXXX
            self._keep_example(self._examples[row, column], text[:EXAMPLE_BYTES])
            if self._counts[row, column] == 0:
                self._errors[row, column] = _padded(_cut(skipped.short_message, ERROR_BYTES), ERROR_BYTES)
            self._counts[row, column] += 1

    @staticmethod
    def _keep_example(slots: torch.Tensor, encoded: bytes) -> None:
        """Store ``encoded`` in the first free slot (all zeros) unless it is kept already or none is free."""
        padded = _padded(encoded, EXAMPLE_BYTES)
        used = (slots != 0).any(dim=1)
        if (slots[used] == padded).all(dim=1).any() or used.all():
            return
        slots[int((~used).nonzero()[0])] = padded

    def as_dict(self) -> dict[str, int]:
        """Skips so far, summed over processes: ``{cause: count}`` for every cause (zeros included)."""
        totals = self._counts.sum(dim=0).tolist()
        return dict(zip(self.causes, totals))

    def examples(self) -> dict[str, list[str]]:
        """The first distinct example ids of each cause that has any (main process first, then workers)."""
        found: dict[str, list[str]] = {}
        for column, cause in enumerate(self.causes):
            kept: list[str] = []
            for slots in self._examples[:, column]:
                for slot in slots[(slots != 0).any(dim=1)]:
                    text = bytes(slot.tolist()).rstrip(b"\0").decode(errors="replace")
                    if text not in kept:
                        kept.append(text)
            if kept:
                found[cause] = kept[: self.max_examples]
        return found

    def first_errors(self) -> dict[str, str]:
        """The first error message of each cause that has any (main process first, then workers)."""
        found: dict[str, str] = {}
        for column, cause in enumerate(self.causes):
            held = [row for row in self._errors[:, column] if row.any()]
            if held:
                found[cause] = bytes(held[0].tolist()).rstrip(b"\0").decode(errors="replace")
        return found

    def total(self) -> int:
        return int(self._counts.sum())

    def reset(self) -> None:
        """Zero every counter (e.g. to count one epoch at a time)."""
        self._counts.zero_()
        self._examples.zero_()
        self._errors.zero_()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The counts and examples (copies), to save with a training state."""
        return {"counts": self._counts.clone(), "examples": self._examples.clone(), "errors": self._errors.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._counts.copy_(state["counts"])
        self._examples.copy_(state["examples"])
        if "errors" in state:  # states saved before first errors were kept have none
            self._errors.copy_(state["errors"])
        else:
            self._errors.zero_()

    def report(self, read: int | None = None) -> SkipReport:
        """Every cause with skips, its count, first record names and first error; ``read``: records read, when
        known."""
        examples, errors = self.examples(), self.first_errors()
        by_cause = {cause: {"count": n, "examples": examples.get(cause, []), "first_error": errors.get(cause)}
                    for cause, n in self.as_dict().items() if n}  # fmt: skip
        return SkipReport(by_cause, read)

    @property
    def max_examples(self) -> int:
        return self._examples.shape[2]

    def summary(self) -> str:
        """A one-line report: total skipped and the non-zero causes with their first ids."""
        return self.report().describe()


def _cut(text: str, size: int) -> bytes:
    """``text`` as at most ``size`` UTF-8 bytes, ending in "..." when cut (never inside a character)."""
    encoded = text.encode(errors="backslashreplace")
    if len(encoded) <= size:
        return encoded
    return encoded[: size - 3].decode(errors="ignore").encode() + b"..."


def _padded(encoded: bytes, size: int) -> torch.Tensor:
    """``encoded`` in a zero-filled uint8 row of ``size`` (zeros mark the unused end)."""
    row = torch.zeros(size, dtype=torch.uint8)
    if encoded:
        row[: len(encoded)] = torch.frombuffer(bytearray(encoded), dtype=torch.uint8)
    return row
