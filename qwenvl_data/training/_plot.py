"""The run's record on disk: metrics.json (losses, accuracies, timings) and a loss curve PNG."""

import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; training machines have no display
import matplotlib.pyplot as plt  # noqa: E402


def write_metrics(path: str | os.PathLike, metrics: dict) -> Path:
    """Write metrics as indented JSON (atomically, so a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    os.replace(partial, path)
    return path


def plot_loss(
    path: str | os.PathLike,
    steps: list[int],
    losses: list[float],
    title: str,
    eval_steps: list[int] = (),
    eval_losses: list[float] = (),
) -> Path:
    """Save the training-loss curve (and the validation loss, when there is one) as a PNG.

    Args:
        path: where the PNG goes.
        steps: optimizer step of each loss value.
        losses: mean loss per trained token at each step.
        title: shown above the plot (e.g. the accuracies before and after).
        eval_steps, eval_losses: steps of the periodic validations and their loss per trained token.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.plot(steps, losses, linewidth=1.2, label="training")
    if eval_steps:
        axes.plot(eval_steps, eval_losses, marker="o", linewidth=1.2, label="validation")
        axes.legend()
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss (per trained token)")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
