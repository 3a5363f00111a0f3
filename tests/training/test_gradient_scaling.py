"""One pass scales and clips the gradients: the same as scaling them, then torch's ``clip_grad_norm_``."""

import math

import pytest
import torch

from qwenvl_data.training._nonfinite import scale_and_clip_gradients

EPS = torch.finfo(torch.float32).eps


def _model_with_gradients(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Linear(32, 4, bias=False))
    for param in model.parameters():
        param.grad = torch.randn_like(param) * 50
    return model


@pytest.mark.parametrize("max_norm", [None, 1.0, 1e6])
def test_scaled_and_clipped_gradients_equal_scaling_then_clip_grad_norm(max_norm):
    ours, reference = _model_with_gradients(0), _model_with_gradients(0)
    scale = 1 / 37
    norm = scale_and_clip_gradients(ours, scale, max_norm)

    for param in reference.parameters():
        param.grad.mul_(scale)
    expected = torch.nn.utils.get_total_norm([p.grad for p in reference.parameters()])
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_(reference.parameters(), max_norm)
    # Worst-case float32 bounds (u = eps / 2 per rounding, any summation order): a norm over the K gradient
    # elements is a sum of K squares, within K u relatively, whose square root halves that: (K / 4 + 1) eps
    # with the scaling's roundings. Two norms are thus within (K / 2 + 3) eps of each other, each clipped
    # gradient (a product with scale x the clip factor from its norm) within that + 3 eps, and the norm of
    # the clipped gradients (our norm's error through the factor, the recomputed norm's own) within the first.
    count = sum(p.numel() for p in ours.parameters())
    norm_bound = (count / 2 + 3) * EPS
    assert norm == pytest.approx(float(expected), rel=norm_bound)
    for mine, theirs in zip(ours.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=norm_bound + 3 * EPS, atol=0)
    if max_norm == 1.0:  # it did clip: the result has the requested norm, up to the two norms' errors
        clipped = torch.nn.utils.get_total_norm([p.grad for p in ours.parameters()])
        assert float(clipped) == pytest.approx(1.0, rel=norm_bound)


def test_a_nonfinite_gradient_gives_a_nonfinite_norm():
    model = _model_with_gradients(1)
    next(model.parameters()).grad[0, 0] = float("nan")
    assert math.isnan(scale_and_clip_gradients(model, 0.5, 1.0))
