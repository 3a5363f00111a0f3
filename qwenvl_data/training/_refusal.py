"""Errors that are the run refusing its inputs, not failing: their message is the whole story.

A bad config key, a busy ``output_dir``, a resume over changed data or settings, too many skipped records:
each message names what to change, and a traceback above it would only bury it. ``run_recipe`` prints
such an error as the run's last line and exits with status 1; any other error keeps its traceback.
"""

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class RunRefused(Exception):
    """Base of the refusals ``run_recipe`` reports in one line (mixed in beside the builtin type users catch)."""


class ConfigError(RunRefused, ValueError):
    """A config the recipe cannot run: unknown or missing keys, bad values, a component that fails to build."""


class MissingInputError(RunRefused, FileNotFoundError):
    """A file or directory the config names that is not there: a data path, a training state to resume from."""


def exit_refused(refusal: BaseException) -> None:
    """End the process as a refusal: ``"<Type>: <message>"`` as the last line on stderr, exit status 1."""
    print(f"{type(refusal).__name__}: {refusal}", file=sys.stderr, flush=True)
    raise SystemExit(1) from None


@contextmanager
def refusals_in_one_line(*also: type[BaseException]) -> Iterator[None]:
    """Within the block, a ``RunRefused`` (or one of ``also``) ends the process by ``exit_refused``."""
    try:
        yield
    except (RunRefused, *also) as refusal:
        exit_refused(refusal)
