"""What a training state depends on, so that a resume with other data or other settings is refused by name.

A state's position (step, data-loader state, RNG states) means something only for the records and settings
it was saved with: the same position over an edited data file or another ``batch_size`` reads other records
than the saved run would have. The fingerprint holds

- every config setting except those listed in ``NOT_COMPUTATION`` (where outputs go, how often to log, save
  or validate, when to stop), flattened to dotted keys, and the number of ranks;
- every file the run reads its records or base weights from (``dataset`` paths and globs, the
  ``checkpointer``'s ``checkpoint_dir`` / ``adapter_dir``): files up to ``FULL_HASH_BYTES`` by a sha256 of
  their content, larger ones by size, modification time and a sha256 of their first and last MiB.

Resuming compares it with the saved one; any difference is refused with the list of what changed, unless the
config's ``resume_overrides`` names it (a setting key or a prefix of one, ``data_files`` or
``checkpoint_files``): then the log lists what was accepted.
"""

import glob
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from qwenvl_data.training._integrity import sha256_of
from qwenvl_data.training._refusal import RunRefused

FULL_HASH_BYTES = 64 << 20
_EDGE_BYTES = 1 << 20
# Settings that change where results go, how often something is logged/saved/validated, or when the run
# stops, but never which records a step reads or what it computes.
NOT_COMPUTATION = (
    "output_dir", "resume_from_checkpoint", "resume_overrides", "stop_after_step", "metric_logger",
    "log_every_n_steps", "checkpointer.output_dir", "checkpointer.save_every_n_steps", "checkpointer.keep_last_n",
    "checkpointer.final_dir_name", "eval_dataset", "eval_batch_size", "eval_max_samples", "eval_every_n_steps",
    "save_hf_every_n_steps", "keep_last_n_hf", "max_skip_fraction", "on_nonfinite_loss", "save_merged_weights",
    "device", "enable_activation_checkpointing", "compile", "fsdp_reshard_after_forward",
)  # fmt: skip
_DATA_PATH_KEYS = ("source", "data_files", "data_dir", "mixture")
DATA_FILES, CHECKPOINT_FILES = "data_files", "checkpoint_files"


class ResumeMismatchError(RunRefused, ValueError):
    """The data files or settings differ from those the training state was saved with."""


def file_fingerprint(path: Path) -> dict[str, Any]:
    """Content hash of a small file; size, mtime and edge hash of a large one (reading it all would cost more
    than the save it protects)."""
    stat = path.stat()
    if stat.st_size <= FULL_HASH_BYTES:
        return {"bytes": stat.st_size, "sha256": sha256_of(path)}
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        digest.update(file.read(_EDGE_BYTES))
        file.seek(stat.st_size - _EDGE_BYTES)
        digest.update(file.read(_EDGE_BYTES))
    return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "edges_sha256": digest.hexdigest()}


def _path_strings(node: Any, keys: Iterable[str]) -> Iterable[str]:
    """String values under ``keys`` anywhere in a nested config (mixtures nest datasets)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in keys:
                yield from _strings(value)
            else:
                yield from _path_strings(value, keys)
    elif isinstance(node, list):
        for value in node:
            yield from _path_strings(value, keys)


def _strings(node: Any) -> Iterable[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _files(patterns: Iterable[str]) -> list[Path]:
    """Existing files the patterns name: a file, every file under a directory, a glob's matches (``source:
    jsonl`` names no file and adds nothing)."""
    found: set[Path] = set()
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        for match in glob.glob(pattern, recursive=True) if glob.has_magic(pattern) else [pattern]:
            path = Path(match)
            if path.is_file():
                found.add(path.resolve())
            elif path.is_dir():
                found.update(p.resolve() for p in path.rglob("*") if p.is_file())
    return sorted(found)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): node}


def _ignored(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def run_fingerprint(cfg: DictConfig, world_size: int) -> dict[str, Any]:
    """The settings and files a training state of this run depends on (see the module docstring)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    settings = {k: v for k, v in _flatten(config).items() if not _ignored(k, NOT_COMPUTATION)}
    settings["world_size"] = world_size
    checkpointer = config.get("checkpointer") or {}
    checkpoint_dirs = [checkpointer[k] for k in ("checkpoint_dir", "adapter_dir") if checkpointer.get(k)]
    data_files = _files(_path_strings(config.get("dataset"), _DATA_PATH_KEYS))
    return {
        "settings": settings,
        DATA_FILES: {str(p): file_fingerprint(p) for p in data_files},
        CHECKPOINT_FILES: {str(p): file_fingerprint(p) for p in _files(checkpoint_dirs)},
    }


def fingerprint_differences(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, str]:
    """``{what: how it changed}`` between two fingerprints; ``what`` is a setting key or ``data_files:<path>`` /
    ``checkpoint_files:<path>``."""
    changes = {}
    old, new = saved["settings"], current["settings"]
    for key in sorted(old.keys() | new.keys()):
        if key not in new:
            changes[key] = f"{old[key]!r} -> (removed)"
        elif key not in old:
            changes[key] = f"(not set) -> {new[key]!r}"
        elif old[key] != new[key]:
            changes[key] = f"{old[key]!r} -> {new[key]!r}"
    for kind in (DATA_FILES, CHECKPOINT_FILES):
        old, new = saved.get(kind, {}), current.get(kind, {})
        for path in sorted(old.keys() | new.keys()):
            if path not in new:
                changes[f"{kind}:{path}"] = "gone (it was read by the saved run)"
            elif path not in old:
                changes[f"{kind}:{path}"] = "new (the saved run did not read it)"
            elif old[path] != new[path]:
                sizes = f"{old[path]['bytes']} -> {new[path]['bytes']} bytes"
                changes[f"{kind}:{path}"] = f"changed ({sizes})" if old[path]["bytes"] != new[path]["bytes"] else \
                    "changed (same size, other content or modification time)"  # fmt: skip
    return changes


def _overridden(what: str, overrides: Iterable[str]) -> bool:
    kind = what.split(":", 1)[0]
    if kind in (DATA_FILES, CHECKPOINT_FILES) and ":" in what:
        return kind in overrides
    return _ignored(what, overrides)


def check_resumable(saved: dict[str, Any] | None, current: dict[str, Any], overrides: Iterable[str],
                    state: Path) -> list[str]:  # fmt: skip
    """Refuse a resume whose data or settings changed, unless ``overrides`` (``resume_overrides``) names each
    change.

    Returns:
        One line per accepted change, for the log (empty when nothing changed, or the state predates fingerprints).

    Raises:
        ResumeMismatchError: naming the state and every change not overridden.
    """
    if saved is None:
        return []
    overrides = list(overrides)
    changes = fingerprint_differences(saved, current)
    refused = {what: how for what, how in changes.items() if not _overridden(what, overrides)}
    if refused:
        listed = "; ".join(f"{what}: {how}" for what, how in refused.items())
        raise ResumeMismatchError(
            f"cannot resume from {state}: it was saved with other data or settings ({listed}). Resume with the "
            "saved ones, start a new run (another output_dir, or resume_from_checkpoint=false), or accept the "
            f"changes with resume_overrides=[{', '.join(sorted({_override_name(w) for w in refused}))}]"
        )
    return [f"{what}: {how}" for what, how in changes.items()]


def _override_name(what: str) -> str:
    kind = what.split(":", 1)[0]
    return kind if kind in (DATA_FILES, CHECKPOINT_FILES) and ":" in what else what
