"""Bounded waits on a rank's data: a batch read that never returns ends the rank, naming the record.

Under FSDP2 a rank stuck reading (a hung network file system, a decoder that never returns) keeps every
other rank waiting inside its next collective until the collective timeout (``collective_timeout_s``,
600 s by default). The watchdog ends the stuck rank itself after ``data_timeout_s``: it prints which rank,
the record it started reading last and where every thread of the rank is, then exits; the other ranks'
collectives fail at once (their peer's connection closes) and torchrun ends them, naming the failed rank.
"""

import faulthandler
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from qwenvl_data._reading import last_reading

EXIT_CODE_STUCK_READ = 3


class ReadWatchdog:
    """Ends this process when a read watched by ``watch()`` takes longer than ``timeout_s``.

    Args:
        timeout_s: seconds a batch read may take; None disables the watchdog.
        rank, world_size: this process's place in the job (named in the message).
        num_workers: DataLoader worker processes (> 0: the record is read in a worker, which the message says).
    """

    def __init__(self, timeout_s: float | None, rank: int = 0, world_size: int = 1, num_workers: int = 0) -> None:
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"data_timeout_s must be > 0 or null, got {timeout_s}")
        self.timeout_s = timeout_s
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers

    @contextmanager
    def watch(self, what: str = "the next batch") -> Iterator[None]:
        """The block must finish within ``timeout_s``, or the process exits with ``EXIT_CODE_STUCK_READ``."""
        if self.timeout_s is None:
            yield
            return
        timer = threading.Timer(self.timeout_s, self._overran, args=(what,))
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def _overran(self, what: str) -> None:
        record = last_reading() or "none yet"
        if self.num_workers:
            record += f" in this process; records are read by {self.num_workers} DataLoader worker process(es)"
        print(
            f"rank {self.rank} of {self.world_size}: reading {what} has not returned after {self.timeout_s:g} s "
            f"(data_timeout_s); the record it started reading last: {record}. Ending rank {self.rank} so that the "
            f"other ranks stop waiting for it; its threads are stuck here:",
            file=sys.stderr,
            flush=True,
        )
        try:
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        except (AttributeError, OSError, ValueError):  # a stderr without a file descriptor (captured): no stacks
            pass
        sys.stderr.flush()
        os._exit(EXIT_CODE_STUCK_READ)
