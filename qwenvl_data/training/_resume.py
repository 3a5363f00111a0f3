"""Resuming a run: pick an intact training state, refuse one saved with other data or settings, restore it, and
make the overrides the user accepted take effect (a saved optimizer or schedule never silently keeps the old
values)."""

from pathlib import Path
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from qwenvl_data.training._checkpoint import TrainingCheckpointer
from qwenvl_data.training._fingerprint import ResumeMismatchError, check_resumable

_NOT_HYPERPARAMETERS = ("params", "initial_lr")


def restore_training_state(
    checkpointer: TrainingCheckpointer,
    resume: bool | str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any | None,
    overrides: list[str],
    announce: bool,
) -> tuple[Path, dict[str, Any]]:
    """Restore the model, optimizer, schedule and RNGs from the state ``resume`` names (collective).

    Args:
        checkpointer: the run's checkpointer, its ``fingerprint`` set.
        resume: ``resume_from_checkpoint`` (True: the newest intact state).
        model, optimizer, lr_scheduler: the freshly built run's (the optimizer holds the configured values).
        overrides: ``resume_overrides``: changed settings or files the user accepts.
        announce: print the accepted changes (rank 0).

    Returns:
        (the state's path, this rank's trainer state).

    Raises:
        ResumeMismatchError: data or settings changed without an override (every change named).
        DamagedStateError, FileNotFoundError, ValueError: see ``TrainingCheckpointer``.
    """
    path = checkpointer.resumable_state(resume)
    accepted = check_resumable(checkpointer.saved_fingerprint(path), checkpointer.fingerprint, overrides, path)
    configured = [{k: v for k, v in group.items() if k not in _NOT_HYPERPARAMETERS} for group in optimizer.param_groups]
    if lr_scheduler is not None:  # a scheduler moved "lr" to its step-0 value; the configured one is initial_lr
        for values, group in zip(configured, optimizer.param_groups):
            values["lr"] = group["initial_lr"]
    state = checkpointer.load_state(path, model, optimizer)
    if lr_scheduler is not None:
        lr_scheduler.load_state_dict(state["lr_scheduler"])
    changed = _apply_optimizer_overrides(optimizer, lr_scheduler, configured, path)
    if announce and accepted:
        print(f"resuming from {path} with changes accepted by resume_overrides: {'; '.join(accepted)}", flush=True)
    if announce and changed:
        print(f"the optimizer takes the configured {', '.join(changed)} instead of the saved value(s)", flush=True)
    return path, state


def _apply_optimizer_overrides(
    optimizer: torch.optim.Optimizer, lr_scheduler: Any | None, configured: list[dict[str, Any]], path: Path
) -> list[str]:
    """Set the configured optimizer hyperparameters over the loaded ones (the fingerprint check has already
    refused any change the user did not accept); a new lr rescales the schedule from the saved step on.

    Returns:
        ``"name=value"`` for each hyperparameter that now differs from the saved state.
    """
    changed = []
    for group, values in zip(optimizer.param_groups, configured):
        saved_lr = group["initial_lr"] if lr_scheduler is not None else group["lr"]
        for key, value in values.items():
            saved = saved_lr if key == "lr" else group.get(key, value)
            if _same(saved, value):
                continue
            changed.append(f"{key}={value}")
            if key != "lr":
                group[key] = value
            elif lr_scheduler is None:
                group["lr"] = value
            elif isinstance(lr_scheduler, LambdaLR):
                group["initial_lr"] = value
            else:
                raise ResumeMismatchError(
                    f"cannot apply optimizer.lr={value} to the {type(lr_scheduler).__name__} schedule saved in "
                    f"{path} (saved base lr {saved_lr}): resume with the saved lr or start a new run"
                )
    if isinstance(lr_scheduler, LambdaLR) and changed:
        lr_scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        for group, base, factor in zip(optimizer.param_groups, lr_scheduler.base_lrs, lr_scheduler.lr_lambdas):
            group["lr"] = base * factor(lr_scheduler.last_epoch)
        lr_scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    return sorted(set(changed))


def _same(saved: Any, configured: Any) -> bool:
    """Equal values, a tuple and the list a saved state made of it included (AdamW's betas)."""
    if isinstance(saved, (list, tuple)) and isinstance(configured, (list, tuple)):
        return list(saved) == list(configured)
    return saved == configured
