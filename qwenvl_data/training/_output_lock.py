"""One run per ``output_dir``: a lock file that a second run finds and refuses, naming the holder.

Two runs writing one ``output_dir`` would overwrite each other's training states and weights and both report
success. The lock is a file created with O_EXCL (atomic on local and network file systems) holding the
holder's pid and host; it is removed when the run ends. A lock left by a killed run is taken over when its
pid no longer runs on this host (said on the console); one from another host is never guessed about.
Creating it is also the first write into ``output_dir``, so an unwritable directory is found before anything
is built.
"""

import json
import os
import socket
import time
from pathlib import Path

from qwenvl_data.training._refusal import RunRefused

LOCK_NAME = ".run.lock"


class OutputDirBusyError(RunRefused, RuntimeError):
    """Another live run holds the ``output_dir`` lock."""


def _pid_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class OutputDirLock:
    """Holds ``output_dir/.run.lock`` for this process until ``release``.

    Args:
        output_dir: the run's directory (created when missing).

    Raises:
        OutputDirBusyError: a live run holds it (naming its pid, host and start time).
        OSError: ``output_dir`` cannot be created or written (naming it and the cause).
    """

    def __init__(self, output_dir: str | os.PathLike) -> None:
        self.path = Path(output_dir) / LOCK_NAME
        self.held = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._acquire()
        except OSError as error:
            raise OSError(error.errno, f"output_dir {self.path.parent} is not writable: "
                                       f"{error.strerror or error}") from error  # fmt: skip
        self.held = True

    def _acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):  # a second try after taking over a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as file:
                json.dump(me, file)
            return
        raise OutputDirBusyError(f"output_dir {self.path.parent}: its lock {self.path} changed hands while taken")

    def _take_over_if_stale(self) -> None:
        try:
            holder = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            holder = {}
        pid, host = holder.get("pid"), holder.get("host")
        if host == socket.gethostname() and isinstance(pid, int) and (pid == os.getpid() or not _pid_runs(pid)):
            why = "an earlier run in this process" if pid == os.getpid() else "which no longer runs"
            print(f"output_dir {self.path.parent}: taking over the lock of run pid {pid} on {host} "
                  f"(started {holder.get('started')}), {why}", flush=True)  # fmt: skip
            self.path.unlink(missing_ok=True)
            return
        raise OutputDirBusyError(
            f"output_dir {self.path.parent} is in use by the run with pid {pid} on host {host} (started "
            f"{holder.get('started')}): use another output_dir, or wait for it to end (if that run is gone, "
            f"delete {self.path})"
        )

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


