"""Non-finite losses and gradients: stop the run naming the step (default), or skip that step and count it.

The check runs before ``optimizer.step()``, so the weights never take a non-finite update: the training
states saved before the stop, and the final weights of a run that skipped such steps, stay finite.
"""

import math

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from qwenvl_data._finite import NonFiniteWeightsError, flatten, nonfinite_names

ON_NONFINITE = ("stop", "skip_step")


class NonFiniteLossError(FloatingPointError):
    """A step's loss or gradient norm is NaN or infinite (``on_nonfinite_loss: stop``)."""


def scale_and_clip_gradients(model: nn.Module, scale: float, max_norm: float | None) -> float:
    """Multiply the gradients by ``scale``, then clip their total L2 norm over all ranks to ``max_norm`` when given.

    The norm is measured once, on the unscaled gradients, and one multiplication by ``scale`` x the clip
    factor (torch's ``clip_grad_norm_`` rule: ``max_norm / (norm + 1e-6)``, at most 1) does both: a pass over
    every gradient less than scaling and clipping one after the other. Without ``max_norm`` the gradients are
    only scaled.

    Returns:
        the total norm of the scaled gradients, before clipping (NaN or inf when a gradient is not finite).
    """
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    scaled_norm = float(norm) * scale
    factor = scale if max_norm is None else scale * min(1.0, max_norm / (scaled_norm + 1e-6))
    if factor != 1.0:
        for grad in grads:
            grad.mul_(factor)
    return scaled_norm


def nonfinite_message(step: int, loss: float, grad_norm: float) -> str | None:
    """Why step ``step`` must not update the weights, or None when its loss and gradient norm are finite."""
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return None
    return (
        f"step {step}: non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} "
        f"(loss {loss}, gradient norm {grad_norm}); the weights were not updated. Lower optimizer.lr, set "
        "clip_grad_norm, check the data, or set on_nonfinite_loss=skip_step to skip such steps"
    )


def check_finite_on_every_rank(state: dict, where: str) -> None:
    """Refuse a (nested) state dict holding NaN/inf on any rank (collective under torch.distributed: every rank
    checks its shards, and all agree, so no rank is left waiting in a save).

    Raises:
        NonFiniteWeightsError: naming ``where`` and the first such tensors (on the ranks that hold them).
    """
    bad = nonfinite_names(flatten(state))
    count = torch.tensor(len(bad))
    if dist.is_available() and dist.is_initialized():
        count = count.to(_collective_device())
        dist.all_reduce(count)
    if int(count):
        listed = f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}" if bad else "shards of other ranks"
        raise NonFiniteWeightsError(f"{where}: {int(count)} tensor(s) hold NaN/inf ({listed})")


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def check_weights_finite(model: nn.Module) -> None:
    """Refuse to write final weights whose trained parameters hold NaN or infinity (collective under FSDP2: each
    rank checks its shards, and all agree).

    Raises:
        NonFiniteLossError: naming the first such parameters (on the ranks that hold them).
    """
    # Only trained parameters can have become non-finite: the frozen ones were checked when they were read
    # (read_safetensors), and a frozen NF4 base cannot even be checked elementwise.
    bad = nonfinite_names((name, param) for name, param in model.named_parameters() if param.requires_grad)
    count = torch.tensor(len(bad), device=next(model.parameters()).device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(count)
    if int(count):
        raise NonFiniteLossError(f"the trained weights hold NaN/inf (in {bad[:5]} here); no final weights written")


def nonfinite_steps_note(skipped_steps: list[int]) -> str:
    """The end-of-run words for the steps ``on_nonfinite_loss=skip_step`` skipped ("" when none was)."""
    if not skipped_steps:
        return ""
    shown = ", ".join(map(str, skipped_steps[:10])) + (" ..." if len(skipped_steps) > 10 else "")
    return f" ({len(skipped_steps)} of them skipped for a non-finite loss or gradient, weights not updated: {shown})"
