"""A tqdm bar that shows the loss and the throughput of a training run."""

import sys
import time

from tqdm import tqdm


class TrainingProgress:
    """Progress over optimizer steps, with loss, tokens/s and samples/s in the bar.

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

    def step(self, loss: float, num_tokens: int, num_samples: int) -> dict[str, float]:
        """Advance one optimizer step; returns the throughput figures shown (for the metric log)."""
        now = time.perf_counter()
        elapsed = max(now - self._last_time, 1e-9)
        self._last_time = now
        figures = {"tokens_per_s": num_tokens / elapsed, "samples_per_s": num_samples / elapsed}
        self._bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{figures['tokens_per_s']:.0f}",
                              samples_s=f"{figures['samples_per_s']:.2f}")
        self._bar.update(1)
        return figures

    def close(self) -> None:
        self._bar.close()
