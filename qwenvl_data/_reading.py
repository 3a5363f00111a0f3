"""Which record this process started reading last, so that a read that never returns can be named.

The record processor marks each record as it starts on it; the training loop's read watchdog (see
``qwenvl_data.training._watchdog``) reports the mark when a batch read overruns. A plain module value:
records are read by one thread per process (DataLoader workers are processes of their own, with their
own mark).
"""

_last_started: str | None = None


def mark_reading(name: str) -> None:
    """Record that this process now reads ``name`` (e.g. ``"sample 12 (id r12)"``)."""
    global _last_started
    _last_started = name


def last_reading() -> str | None:
    """The name last given to ``mark_reading`` in this process, or None."""
    return _last_started
