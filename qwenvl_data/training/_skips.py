"""What the training loop read and skipped: counts by cause with the first record names, per epoch and for the
run, and the ``max_skip_fraction`` stop.

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
from qwenvl_data.datasets._stats import SkipCounts, SkippedRecord, SkipReport
from qwenvl_data.errors import SampleError
from qwenvl_data.training._progress import say
from qwenvl_data.training._refusal import RunRefused

MIN_RECORDS_FOR_FRACTION = 100  # below this, a few bad records would be a large fraction by chance


class TooManySkipsError(RunRefused, RuntimeError):
    """More records were skipped than ``max_skip_fraction`` allows, or an epoch had no usable record at all."""


class SkipLedger:
    """Records read and skipped by this rank's loop, for the current epoch and for the whole run.

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
        self.run, self.epoch = SkipCounts(max_workers=0), SkipCounts(max_workers=0)
        self.read_in_run = self.read_in_epoch = 0
        self.passes_in_run = self.passes_in_epoch = 0

    def record(self, outcome: dict | SkippedRecord | PassStarted) -> dict | None:
        """Count one consumed record; returns the sample, or None when it was skipped (or was no record: a
        ``PassStarted``, counted and announced on the console).

        Raises:
            TooManySkipsError: the run's skip fraction is now over ``max_skip_fraction``.
        """
        if isinstance(outcome, PassStarted):
            self.passes_in_run += 1
            self.passes_in_epoch += 1
            if self.announce:
                say(f"{outcome.dataset}: the data ran out after {self.read_in_epoch} records of this epoch; reading "
                    f"it again (restart {outcome.number} of this reader): records and skips of repeated passes are "
                    "counted again")  # fmt: skip
            return None
        self.read_in_run += 1
        self.read_in_epoch += 1
        if isinstance(outcome, SkippedRecord):
            self._add(outcome)
        self._check_fraction()
        return None if isinstance(outcome, SkippedRecord) else outcome

    def reject(self, sample: dict, error: SampleError) -> None:
        """Count a sample already read as skipped after all (the collator refused it: ``error``)."""
        self._add(SkippedRecord.refused(sample, error))
        self._check_fraction()

    def _add(self, skipped: SkippedRecord) -> None:
        self.run.add(skipped)
        self.epoch.add(skipped)

    def _check_fraction(self) -> None:
        skipped = self.run.total()
        # In integers: 0.29 * 100 is 28.999999999999996 in floats, which 29 skips of 100 would exceed.
        limit = Fraction(str(self.max_skip_fraction))
        over = skipped * limit.denominator > limit.numerator * self.read_in_run
        if self.read_in_run >= MIN_RECORDS_FOR_FRACTION and over:
            raise TooManySkipsError(
                f"stopping: {skipped} of the {self.read_in_run} records read so far were skipped "
                f"({skipped / self.read_in_run:.1%} > max_skip_fraction={self.max_skip_fraction}); "
                f"{self.run.summary()}. Fix these records (dataset.on_error=raise stops at the first one with its "
                "error) or raise max_skip_fraction"
            )

    def no_usable_record(self, epoch: int) -> TooManySkipsError:
        """The error for an epoch whose records gave no usable sample at all."""
        return TooManySkipsError(
            f"epoch {epoch}: no usable sample: all {self.read_in_epoch} records read were skipped; "
            f"{self.epoch.summary()}"
        )

    def start_epoch(self) -> None:
        self.epoch.reset()
        self.read_in_epoch = self.passes_in_epoch = 0

    @property
    def skipped_in_run(self) -> int:
        return self.run.total()

    def state_dict(self) -> dict[str, Any]:
        return {"run": self.run.state_dict(), "epoch": self.epoch.state_dict(),
                "read_in_run": self.read_in_run, "read_in_epoch": self.read_in_epoch,
                "passes_in_run": self.passes_in_run, "passes_in_epoch": self.passes_in_epoch}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run.load_state_dict(state["run"])
        self.epoch.load_state_dict(state["epoch"])
        self.read_in_run, self.read_in_epoch = state["read_in_run"], state["read_in_epoch"]
        self.passes_in_run = state.get("passes_in_run", 0)  # states saved before restarts were counted
        self.passes_in_epoch = state.get("passes_in_epoch", 0)

    def report(self, scope: str) -> SkipReport:
        """The skips of ``scope`` ("run" or "epoch") with the records read and the data's restarts, summed over
        all ranks (collective under torch.distributed: every rank calls it)."""
        counts, read, passes = (
            (self.run, self.read_in_run, self.passes_in_run) if scope == "run"
            else (self.epoch, self.read_in_epoch, self.passes_in_epoch)
        )  # fmt: skip
        reports = [dataclasses.replace(counts.report(read), passes_started=passes)]
        if dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, reports[0])
            reports = gathered
        return SkipReport.merged(reports, counts.max_examples)
