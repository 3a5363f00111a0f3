"""What a long run does every N steps besides training: validate, and write HF directories it can ship.

Config (top-level keys of every fine-tuning recipe):
- ``eval_every_n_steps``: validation loss (and answer accuracy) on ``eval_dataset`` every N optimizer steps.
- ``save_hf_every_n_steps``: a complete HF directory at ``<checkpointer final dir>/step_<k>/`` every N steps.
- ``keep_last_n_hf``: how many of those step directories stay on disk; older ones are deleted.
(Types and defaults: ``RecipeSettings`` in training/_settings.py.)
"""

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

_STEP_DIR = re.compile(r"^step_(\d+)$")


@dataclass(frozen=True)
class PeriodicSchedule:
    """When to validate and when to write an intermediate HF directory.

    Args:
        eval_every: validate every this many optimizer steps (None: only before and after training).
        save_hf_every: write ``step_<k>`` HF directories every this many steps (None: only the final one).
        keep_last_n_hf: step directories kept on disk.
    """

    eval_every: int | None
    save_hf_every: int | None
    keep_last_n_hf: int

    def eval_due(self, step: int) -> bool:
        return self.eval_every is not None and step % self.eval_every == 0

    def save_hf_due(self, step: int) -> bool:
        return self.save_hf_every is not None and step % self.save_hf_every == 0


def hf_step_dir(final_dir: Path, step: int) -> Path:
    """Where the HF directory written after optimizer step ``step`` goes."""
    return final_dir / f"step_{step}"


def hf_step_dirs(final_dir: Path) -> list[Path]:
    """The complete step directories under ``final_dir``, oldest step first (``.partial`` ones excluded)."""
    if not final_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in final_dir.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [path for _, path in sorted(found)]


def prune_hf_step_dirs(final_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` step directories; returns the deleted ones."""
    old = hf_step_dirs(final_dir)[:-keep]
    for path in old:
        shutil.rmtree(path)
    return old
