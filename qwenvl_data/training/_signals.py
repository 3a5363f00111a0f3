"""SIGTERM and SIGINT as a request to stop cleanly: finish the current step, save, exit.

Schedulers preempt with SIGTERM and a grace period before SIGKILL (SLURM signals every process of the job,
Kubernetes the container's first process, torchrun forwards it to its ranks and waits ``--shutdown-timeout``
seconds); a user presses Ctrl-C (SIGINT, to every process of the terminal's foreground group). Either one only
sets a flag here: the loop finishes its optimizer step, every rank agrees to stop at the same step, saves a
resumable state, and the run exits with 128 + the signal number after printing how to resume. A repeated
signal (torchrun forwards the one its ranks got already) changes nothing, so a save is never cut short and
leaves no ``.partial`` directory; SIGKILL (or Ctrl-\\) still stops at once.

DataLoader workers get the same signals (a process group, SLURM): they ignore SIGINT, and SIGTERM while the
training process is stopping, so they keep serving the step being finished until the loader shuts them down.
"""

import functools
import multiprocessing
import multiprocessing.synchronize
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import torch

from qwenvl_data.training._distributed import all_reduce_sum

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# How long a worker's SIGTERM waits for the training process to say it is stopping too (a signal sent to every
# process reaches the worker first as often as not); the recipes shut their loaders down without SIGTERM.
WORKER_WAIT_S = 5.0

# Set while the training process finishes its step and saves after a stop signal; created before any
# DataLoader worker, which gets it through ``SHIELD_WORKER`` (inherited, also by spawned workers).
_STOPPING = multiprocessing.Event()


class RunStopped(Exception):
    """Raised by the loop after it saved and reported a stop asked for by ``signum``."""

    def __init__(self, signum: int, message: str | None = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum  # what a shell reports for a process ended by that signal
        self.message = message  # where the run stopped and how to resume: printed last, once the bar is gone


class StopRequest:
    """Whether SIGTERM/SIGINT arrived while installed (``installed()``): the first one's number."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @contextmanager
    def installed(self) -> Iterator["StopRequest"]:
        """Catch the stop signals in this block (main thread only: elsewhere signals stay as they were)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        try:
            yield self
        finally:
            _STOPPING.clear()  # the loaders' workers may be terminated as usual again
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            return  # a repeat (e.g. forwarded by torchrun): the stop is under way
        self.signum = signum
        _STOPPING.set()
        print(f"\n{name} received: finishing the current step, then saving a resumable state (SIGKILL stops at "
              "once, without saving)", file=sys.stderr, flush=True)  # fmt: skip

    def agreed(self, device: torch.device, world_size: int) -> int | None:
        """The signal to stop on, the same on every rank (collective when ``world_size`` > 1: a rank that
        got no signal stops with the others, at the same step)."""
        if world_size == 1:
            return self.signum
        received = torch.tensor([self.signum == signum for signum in STOP_SIGNALS], dtype=torch.int64, device=device)
        ranks = all_reduce_sum(received).tolist()  # how many ranks got each signal
        return next((signum for signum, count in zip(STOP_SIGNALS, ranks) if count), None)


def _shield_worker(stopping: multiprocessing.synchronize.Event, worker_id: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, functools.partial(_worker_sigterm, stopping))


def _worker_sigterm(stopping: multiprocessing.synchronize.Event, signum: int, frame: FrameType | None) -> None:
    """Ignore SIGTERM while the training process stops cleanly (it shuts its loaders down afterwards); any
    other SIGTERM (a loader or interpreter shutting workers down) ends the worker as by default."""
    if stopping.wait(WORKER_WAIT_S):
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


#: ``worker_init_fn`` of the recipes' loaders: the training process decides when its workers stop.
SHIELD_WORKER = functools.partial(_shield_worker, _STOPPING)
