"""What a run shows a person: lines above the progress bar, never inside it; the accuracy points of loss.png."""

import re

from qwenvl_data.training._plot import accuracy_points
from qwenvl_data.training._progress import TrainingProgress, say


def _console_lines(text: str) -> list[str]:
    """What a terminal ends up showing, line by line: a carriage return redraws the line it is on."""
    return [line.split("\r")[-1] for line in text.split("\n")]


def test_a_line_said_while_the_bar_runs_stands_on_its_own_line(capsys):
    progress = TrainingProgress(total_steps=3)
    progress.step(loss=1.5, num_tokens=100, num_samples=4)
    say("held-out answer accuracy at step 1: 50.0% (2/4)")
    progress.step(loss=1.25, num_tokens=100, num_samples=4)
    progress.close()
    out = capsys.readouterr().out
    lines = [line.strip() for line in re.split(r"[\r\n]", out)]
    assert "held-out answer accuracy at step 1: 50.0% (2/4)" in lines
    assert not any("step 1: 50.0%" in line and "loss=" in line for line in _console_lines(out))


def test_say_without_a_bar_is_a_plain_line(capsys):
    say("answers to 2 held-out questions (generated):")
    assert capsys.readouterr().out == "answers to 2 held-out questions (generated):\n"


def test_accuracy_points_are_before_periodic_and_after_training_in_step_order():
    history = {
        "steps": [1, 2, 3, 4], "loss": [2.0, 1.5, 1.0, 0.5],
        "eval_before": {"accuracy": 0.0},
        "eval": [{"step": 2, "loss": 1.2, "accuracy": 0.5}, {"step": 4, "loss": 0.6, "accuracy": 0.75}],
        "eval_after": {"accuracy": 0.75},
    }  # fmt: skip
    assert accuracy_points(history) == ([0, 2, 4], [0.0, 0.5, 0.75])
    resumed_without_before = {**history, "eval_before": None, "eval": [], "eval_after": {"accuracy": 1.0}}
    assert accuracy_points(resumed_without_before) == ([4], [1.0])
    assert accuracy_points({"steps": [], "loss": []}) == ([], [])
