"""What the training loop read and skipped: counts by cause with the first record names, per epoch and for the
run (and per dataset of a mixture), and the ``max_skip_fraction`` stop.

Records are counted each time they are read: when a stream (or a mixture's dataset) runs out inside an epoch
and starts its data again (a ``PassStarted``), a record read in two passes counts twice, read or skipped. The
restarts are counted too (``passes_started``), said on the console when they happen and in every report, so
that "skipped 28 of 76 records" over 11 records is read with "the data was started again 6 times".

The loop counts the outcomes its steps consume, in the main process, so the figures are exact (read-ahead
by DataLoader workers is not counted), identical across a resume (the ledger is saved with each training
state) and summed over ranks for the report. Every skip arrives as a ``SkippedRecord`` (datasets/_stats.py).
"""

import dataclasses
from fractions import Fraction
from typing import Any

import torch.distributed as dist

from qwenvl_data.datasets._nodes import PassStarted
from qwenvl_data.datasets._stats import MIXTURE_SOURCE_KEY, SkipCounts, SkippedRecord, SkipReport
from qwenvl_data.errors import SampleError
from qwenvl_data.training._progress import say
from qwenvl_data.training._refusal import RunRefused

MIN_RECORDS_FOR_FRACTION = 100  # below this, a few bad records would be a large fraction by chance


class TooManySkipsError(RunRefused, RuntimeError):
    """More records were skipped than ``max_skip_fraction`` allows, or an epoch had no usable record at all."""


class _Tally:
    """Records read, their skips by cause and the data's restarts, in one scope: an epoch or the run, of the
    whole data or of one dataset of a mixture."""

    def __init__(self) -> None:
        self.skips, self.read, self.passes = SkipCounts(max_workers=0), 0, 0

    def reset(self) -> None:
        self.skips.reset()
        self.read = self.passes = 0

    def report(self) -> SkipReport:
        return dataclasses.replace(self.skips.report(self.read), passes_started=self.passes)

    def state_dict(self) -> dict[str, Any]:
        return {"counts": self.skips.state_dict(), "read": self.read, "passes": self.passes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skips.load_state_dict(state["counts"])
        self.read, self.passes = state["read"], state["passes"]


class SkipLedger:
    """Records read and skipped by this rank's loop, for the current epoch and for the whole run; in a mixture
    also per dataset (each outcome names its dataset: ``MIXTURE_SOURCE_KEY`` of a sample, ``source`` of a skip, the
    ``dataset`` of a ``PassStarted``).

    Args:
        max_skip_fraction: stop once at least ``MIN_RECORDS_FOR_FRACTION`` records were read in the run and
            more than this fraction of them were skipped (0 stops at the first skip, 1 never stops).
        announce: say a restart of the data on the console (the main rank's ledger only: every rank
            restarts its own shard, and all restarts are counted in the totals).
    """

    def __init__(self, max_skip_fraction: float, announce: bool = True) -> None:
        if not 0.0 <= max_skip_fraction <= 1.0:
            raise ValueError(f"max_skip_fraction must be in [0, 1], got {max_skip_fraction}")
        self.max_skip_fraction = max_skip_fraction
        self.announce = announce
        self._run, self._epoch = _Tally(), _Tally()
        self._sources: dict[str, tuple[_Tally, _Tally]] = {}  # name -> (run, epoch), in the mixture's order

    def expect_sources(self, names: list[str]) -> None:
        """Count per dataset of a mixture, reporting them in this order (also those never drawn: read 0)."""
        for name in names:
            self._sources.setdefault(name, (_Tally(), _Tally()))

    def _tallies(self, source: str | None) -> list[_Tally]:
        """The tallies an outcome of ``source`` (None: not from a mixture) counts in."""
        if source is None:
            return [self._run, self._epoch]
        return [self._run, self._epoch, *self._sources.setdefault(source, (_Tally(), _Tally()))]

    @property
    def read_in_run(self) -> int:
        return self._run.read

    @property
    def read_in_epoch(self) -> int:
        return self._epoch.read

    def record(self, outcome: dict | SkippedRecord | PassStarted) -> dict | None:
        """Count one consumed record; returns the sample, or None when it was skipped (or was no record: a
        ``PassStarted``, counted and announced on the console).

        Raises:
            TooManySkipsError: the run's skip fraction is now over ``max_skip_fraction``.
        """
        if isinstance(outcome, PassStarted):
            tallies = self._tallies(outcome.dataset if outcome.dataset in self._sources else None)
            for tally in tallies:
                tally.passes += 1
            if self.announce:
                say(f"{outcome.dataset}: the data ran out after {tallies[-1].read} records of this epoch; reading "
                    f"it again (restart {outcome.number} of this reader): records and skips of repeated passes are "
                    "counted again")  # fmt: skip
            return None
        skipped = isinstance(outcome, SkippedRecord)
        for tally in self._tallies(outcome.source if skipped else outcome.get(MIXTURE_SOURCE_KEY)):
            tally.read += 1
            if skipped:
                tally.skips.add(outcome)
        self._check_fraction()
        return None if skipped else outcome

    def reject(self, sample: dict, error: SampleError) -> None:
        """Count a sample already read as skipped after all (the collator refused it: ``error``)."""
        skipped = SkippedRecord.refused(sample, error)
        for tally in self._tallies(skipped.source):
            tally.skips.add(skipped)
        self._check_fraction()

    def _check_fraction(self) -> None:
        skipped, read = self._run.skips.total(), self._run.read
        # In integers: 0.29 * 100 is 28.999999999999996 in floats, which 29 skips of 100 would exceed.
        limit = Fraction(str(self.max_skip_fraction))
        over = skipped * limit.denominator > limit.numerator * read
        if read >= MIN_RECORDS_FOR_FRACTION and over:
            raise TooManySkipsError(
                f"stopping: {skipped} of the {read} records read so far were skipped "
                f"({skipped / read:.1%} > max_skip_fraction={self.max_skip_fraction}); "
                f"{self._run.skips.summary()}{self._per_source('run')}. Fix these records (dataset.on_error=raise "
                "stops at the first one with its error) or raise max_skip_fraction"
            )

    def _per_source(self, scope: str) -> str:
        """``; per dataset: <name>: skipped 2 of 40 records: ...`` of this rank in a mixture, else empty."""
        index = 0 if scope == "run" else 1
        parts = [f"{name}: {tallies[index].report().brief()}" for name, tallies in self._sources.items()]
        return "; per dataset: " + "; ".join(parts) if parts else ""

    def no_usable_record(self, epoch: int) -> TooManySkipsError:
        """The error for an epoch whose records gave no usable sample at all."""
        return TooManySkipsError(
            f"epoch {epoch}: no usable sample: all {self.read_in_epoch} records read were skipped; "
            f"{self._epoch.skips.summary()}{self._per_source('epoch')}"
        )

    def start_epoch(self) -> None:
        for tally in [self._epoch, *(epoch for _, epoch in self._sources.values())]:
            tally.reset()

    @property
    def skipped_in_run(self) -> int:
        return self._run.skips.total()

    def state_dict(self) -> dict[str, Any]:
        return {"run": self._run.skips.state_dict(), "epoch": self._epoch.skips.state_dict(),
                "read_in_run": self._run.read, "read_in_epoch": self._epoch.read,
                "passes_in_run": self._run.passes, "passes_in_epoch": self._epoch.passes,
                "sources": {name: {"run": run.state_dict(), "epoch": epoch.state_dict()}
                            for name, (run, epoch) in self._sources.items()}}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._run.skips.load_state_dict(state["run"])
        self._epoch.skips.load_state_dict(state["epoch"])
        self._run.read, self._epoch.read = state["read_in_run"], state["read_in_epoch"]
        self._run.passes = state.get("passes_in_run", 0)  # states saved before restarts were counted
        self._epoch.passes = state.get("passes_in_epoch", 0)
        for name, tallies in state.get("sources", {}).items():  # states saved before sources were counted: none
            run, epoch = self._sources.setdefault(name, (_Tally(), _Tally()))
            run.load_state_dict(tallies["run"])
            epoch.load_state_dict(tallies["epoch"])

    def report(self, scope: str) -> SkipReport:
        """The skips of ``scope`` ("run" or "epoch") with the records read and the data's restarts (per dataset
        too in a mixture), summed over all ranks (collective under torch.distributed: every rank calls it)."""
        index = 0 if scope == "run" else 1
        whole = (self._run, self._epoch)[index]
        by_source = {name: tallies[index].report() for name, tallies in self._sources.items()}
        reports = [dataclasses.replace(whole.report(), by_source=by_source)]
        if dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, reports[0])
            reports = gathered
        return SkipReport.merged(reports, whole.skips.max_examples)
