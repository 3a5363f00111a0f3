"""What a long run does every N steps besides training: validate, and write HF directories it can ship.

Config (top-level keys of every fine-tuning recipe):
- ``eval_every_n_steps``: validation loss (and answer accuracy) on ``eval_dataset`` every N optimizer steps.
- ``save_hf_every_n_steps``: a complete HF directory at ``<checkpointer final dir>/step_<k>/`` every N steps.
- ``keep_last_n_hf`` (default 1): how many of those step directories stay on disk; older ones are deleted.
"""

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

_STEP_DIR = re.compile(r"^step_(\d+)$")


def _positive_or_none(cfg: DictConfig, key: str, recipe: str) -> int | None:
    value = cfg.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{recipe}: `{key}` must be an integer >= 1 or null, got {value!r}")
    return value


@dataclass(frozen=True)
class PeriodicSchedule:
    """When to validate and when to write an intermediate HF directory.

    Args:
        eval_every: validate every this many optimizer steps (None: only before and after training).
        save_hf_every: write ``step_<k>`` HF directories every this many steps (None: only the final one).
        keep_last_n_hf: step directories kept on disk.
    """

    eval_every: int | None = None
    save_hf_every: int | None = None
    keep_last_n_hf: int = 1

    @classmethod
    def from_config(cls, cfg: DictConfig, recipe: str) -> "PeriodicSchedule":
        """Read and check the three keys; errors name the key and the recipe."""
        keep = _positive_or_none(cfg, "keep_last_n_hf", recipe)
        return cls(
            _positive_or_none(cfg, "eval_every_n_steps", recipe),
            _positive_or_none(cfg, "save_hf_every_n_steps", recipe),
            1 if keep is None else keep,
        )

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
