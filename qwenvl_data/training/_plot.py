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


def plot_history(path: str | os.PathLike, history: dict, title: str) -> Path:
    """Save the run's curves as a PNG: training loss per step, and on a second axis the held-out answer accuracy
    of every evaluation (before training at step 0, every ``eval_every_n_steps``, after training), next to the
    validation loss of the periodic evaluations.

    Args:
        path: where the PNG goes.
        history: the recipe's history: ``steps`` and ``loss`` (mean loss per trained token at each step),
            ``eval_before`` / ``eval_after`` (``answer_accuracy`` results or None), ``eval`` (periodic
            ``{"step", "loss", "accuracy"}`` records, optional).
        title: shown above the plot (e.g. the accuracies before and after).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.plot(history["steps"], history["loss"], linewidth=1.2, label="training loss")
    evals = history.get("eval", [])
    if evals:
        axes.plot([e["step"] for e in evals], [e["loss"] for e in evals], marker="o", linewidth=1.2,
                  label="validation loss")  # fmt: skip
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss (per trained token)")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    handles, labels = axes.get_legend_handles_labels()
    steps, accuracies = accuracy_points(history)
    if steps:
        right = axes.twinx()
        right.plot(steps, [100 * a for a in accuracies], color="tab:green", marker="s", linewidth=1.2,
                   label="held-out accuracy")  # fmt: skip
        right.set_ylabel("held-out answer accuracy (%)")
        right.set_ylim(0, 100)
        more_handles, more_labels = right.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    axes.legend(handles, labels, loc="center right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def accuracy_points(history: dict) -> tuple[list[int], list[float]]:
    """(steps, accuracies) of the run's evaluations in step order: before training (step 0), the periodic ones,
    after training (the last step; it replaces a periodic one at the same step, which measured the same weights)."""
    points = {}
    if history.get("eval_before"):
        points[0] = history["eval_before"]["accuracy"]
    points.update({e["step"]: e["accuracy"] for e in history.get("eval", []) if e.get("accuracy") is not None})
    if history.get("eval_after") and history["steps"]:
        points[history["steps"][-1]] = history["eval_after"]["accuracy"]
    steps = sorted(points)
    return steps, [points[step] for step in steps]
