"""Skip counters by cause, with the first record ids of each, that stay correct when DataLoader workers
process the samples.

Each worker is its own process holding a pickled copy of the dataset, so plain attributes would count
per copy and be lost. The counts and example ids live in shared-memory tensors created in the dataset's
``__init__``; each DataLoader worker writes only its own row (row 0 is the main process), so no two
processes ever update the same cell and no cross-process lock is needed.
"""

import threading
from typing import Any

import torch
from torch.utils.data import get_worker_info

from qwenvl_data.errors import SampleError

EXAMPLE_BYTES = 96  # an example id (and exception type) is cut to this many UTF-8 bytes


def _all_causes() -> tuple[str, ...]:
    """Every ``cause`` defined by ``SampleError`` and its subclasses, in definition order."""
    causes, stack = [], [SampleError]
    while stack:
        cls = stack.pop(0)
        if cls.cause not in causes:
            causes.append(cls.cause)
        stack.extend(cls.__subclasses__())
    return tuple(causes)


def _cause_of(error: SampleError | str, known: dict[str, int]) -> str:
    """``error.cause``, where a subclass defined after the counters were made counts as its nearest known parent."""
    if isinstance(error, str):
        return error
    cls = type(error)
    while cls.cause not in known:
        cls = cls.__mro__[1]
    return cls.cause


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
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        del state["_lock"]  # a thread lock cannot be pickled; each process gets its own
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def add(self, error: SampleError | str, example: Any = None) -> None:
        """Count one skipped sample under ``error``'s cause (or the cause named), keeping ``example`` (its id,
        as text) among the first few of that cause."""
        column = self._column[_cause_of(error, self._column)]
        info = get_worker_info()
        row = 0 if info is None else info.id + 1
        if row >= self._counts.shape[0]:
            raise RuntimeError(f"SkipCounts holds {self._counts.shape[0] - 1} worker rows; worker {info.id} has none")
        with self._lock:  # threads of one process (e.g. a thread-based ParallelMapper) share a row
            if example is not None:
                text = str(example).encode(errors="backslashreplace")  # a lone surrogate (from JSON) as \\udXXX
                self._keep_example(self._examples[row, column], text[:EXAMPLE_BYTES])
            self._counts[row, column] += 1

    @staticmethod
    def _keep_example(slots: torch.Tensor, encoded: bytes) -> None:
        """Store ``encoded`` in the first free slot (all zeros) unless it is kept already or none is free."""
        padded = torch.zeros(EXAMPLE_BYTES, dtype=torch.uint8)
        padded[: len(encoded)] = torch.frombuffer(bytearray(encoded), dtype=torch.uint8)
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

    def total(self) -> int:
        return int(self._counts.sum())

    def reset(self) -> None:
        """Zero every counter (e.g. to count one epoch at a time)."""
        self._counts.zero_()
        self._examples.zero_()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The counts and examples (copies), to save with a training state."""
        return {"counts": self._counts.clone(), "examples": self._examples.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._counts.copy_(state["counts"])
        self._examples.copy_(state["examples"])

    def report(self) -> dict[str, dict[str, Any]]:
        """``{cause: {"count": n, "examples": [first ids]}}`` for every cause with skips."""
        examples = self.examples()
        return {cause: {"count": n, "examples": examples.get(cause, [])} for cause, n in self.as_dict().items() if n}

    @property
    def max_examples(self) -> int:
        return self._examples.shape[2]

    def summary(self) -> str:
        """A one-line report: total skipped and the non-zero causes with their first ids."""
        return f"skipped {self.total()} samples" + describe_causes(self.report())


def describe_causes(by_cause: dict[str, dict[str, Any]]) -> str:
    """``": cause=n (e.g. id, id); ..."`` for a ``SkipCounts.report()``; empty when nothing was skipped."""
    parts = [f"{cause}={entry['count']}" + (f" (e.g. {', '.join(entry['examples'])})" if entry["examples"] else "")
             for cause, entry in by_cause.items()]  # fmt: skip
    return ": " + "; ".join(parts) if parts else ""
