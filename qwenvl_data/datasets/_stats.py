"""Skip counters by cause that stay correct when DataLoader workers process the samples.

Each worker is its own process holding a pickled copy of the dataset, so plain attributes would count
per copy and be lost. The counts live in one shared-memory tensor created in the dataset's ``__init__``;
each DataLoader worker writes only its own row (row 0 is the main process), so no two processes ever
update the same cell and no cross-process lock is needed.
"""

import threading

import torch
from torch.utils.data import get_worker_info

from qwenvl_data.errors import SampleError


def _all_causes() -> tuple[str, ...]:
    """Every ``cause`` defined by ``SampleError`` and its subclasses, in definition order."""
    causes, stack = [], [SampleError]
    while stack:
        cls = stack.pop(0)
        if cls.cause not in causes:
            causes.append(cls.cause)
        stack.extend(cls.__subclasses__())
    return tuple(causes)


class SkipCounts:
    """Counts skipped samples by ``SampleError.cause`` across the main process and its DataLoader workers.

    Args:
        max_workers: DataLoader workers that can write (one row each, plus the main process).
    """

    def __init__(self, max_workers: int = 64) -> None:
        self.causes = _all_causes()
        self._column = {cause: i for i, cause in enumerate(self.causes)}
        self._counts = torch.zeros(max_workers + 1, len(self.causes), dtype=torch.int64).share_memory_()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        del state["_lock"]  # a thread lock cannot be pickled; each process gets its own
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def add(self, error: SampleError) -> None:
        """Count one skipped sample under ``error.cause`` (a subclass's unknown cause counts as its parent's)."""
        cls = type(error)
        while cls.cause not in self._column:
            cls = cls.__mro__[1]
        info = get_worker_info()
        row = 0 if info is None else info.id + 1
        if row >= self._counts.shape[0]:
            raise RuntimeError(f"SkipCounts holds {self._counts.shape[0] - 1} worker rows; worker {info.id} has none")
        with self._lock:  # threads of one process (e.g. a thread-based ParallelMapper) share a row
            self._counts[row, self._column[cls.cause]] += 1

    def as_dict(self) -> dict[str, int]:
        """Skips so far, summed over processes: ``{cause: count}`` for every cause (zeros included)."""
        totals = self._counts.sum(dim=0).tolist()
        return dict(zip(self.causes, totals))

    def reset(self) -> None:
        """Zero every counter (e.g. to count one epoch at a time)."""
        self._counts.zero_()

    def summary(self) -> str:
        """A one-line report: total skipped and the non-zero causes."""
        counts = self.as_dict()
        nonzero = ", ".join(f"{cause}={n}" for cause, n in counts.items() if n)
        return f"skipped {sum(counts.values())} samples" + (f" ({nonzero})" if nonzero else "")
