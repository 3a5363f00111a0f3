"""Errors that are the run refusing its inputs, not failing: their message is the whole story.

A bad config key, a busy ``output_dir``, a resume over changed data or settings, too many skipped records:
each message names what to change, and a traceback above it would only bury it. ``run_recipe`` prints
such an error as the run's last line and exits with status 1; any other error keeps its traceback.
"""


class RunRefused(Exception):
    """Base of the refusals ``run_recipe`` reports in one line (mixed in beside the builtin type users catch)."""


class ConfigError(RunRefused, ValueError):
    """A config the recipe cannot run: unknown or missing keys, bad values, a component that fails to build."""


class MissingInputError(RunRefused, FileNotFoundError):
    """A file or directory the config names that is not there: a data path, a training state to resume from."""
