"""The console of a training run: a tqdm bar with the loss, the throughput and the records skipped so far, and
``say`` for every other line, printed above the bar so that nothing lands inside it."""

import sys
import time

from tqdm import tqdm


class TrainingProgress:
    """Progress over optimizer steps, with loss, tokens/s, samples/s and skips so far in the bar.

    Args:
        total_steps: steps the run will take (bar length).
        initial_step: steps already done (resumed runs start the bar there).
        enabled: False on non-zero ranks, which stay silent.
    """

    def __init__(self, total_steps: int, initial_step: int = 0, enabled: bool = True) -> None:
        self._bar = tqdm(
            total=total_steps, initial=initial_step, disable=not enabled, desc="train", unit="step",
            dynamic_ncols=True, file=sys.stdout,
        )
        self._last_time = time.perf_counter()

    def step(
        self, loss: float, num_tokens: int, num_samples: int, skipped: int = 0, nonfinite: int = 0
    ) -> dict[str, float]:
        """Advance one optimizer step; returns the throughput figures shown (for the metric log).

        Args:
            skipped: records skipped so far in the run (shown as ``skipped=``).
            nonfinite: steps skipped so far for a non-finite loss (shown as ``nonfinite_steps=`` when any).
        """
        now = time.perf_counter()
        elapsed = max(now - self._last_time, 1e-9)
        self._last_time = now
        figures = {"tokens_per_s": num_tokens / elapsed, "samples_per_s": num_samples / elapsed}
        postfix = {"loss": f"{loss:.4f}", "tok_s": f"{figures['tokens_per_s']:.0f}",
                   "samples_s": f"{figures['samples_per_s']:.2f}", "skipped": skipped}  # fmt: skip
        if nonfinite:
            postfix["nonfinite_steps"] = nonfinite
        self._bar.set_postfix(postfix)
        self._bar.update(1)
        return figures

    def write(self, line: str) -> None:
        """Print a line above the bar (the bar stays the last line while running); silent where disabled."""
        if not self._bar.disable:
            say(line)

    def close(self) -> None:
        self._bar.close()


def say(line: str) -> None:
    """Print a line on stdout above any open progress bar (which is redrawn below it), or plainly when none is."""
    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()
