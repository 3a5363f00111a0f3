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
    # Float32, same terms in another order: the norm is a sum of 560 squares (each within 2 eps after the
    # scale, the sum within 560 eps), the gradients two roundings of products apart, plus the norm's error
    # through the clip factor.
    assert norm == pytest.approx(float(expected), rel=600 * EPS)
    for mine, theirs in zip(ours.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=600 * EPS, atol=0)
    if max_norm == 1.0:  # it did clip: the result has the requested norm
        clipped = torch.nn.utils.get_total_norm([p.grad for p in ours.parameters()])
        assert float(clipped) == pytest.approx(1.0, rel=1e-5)


def test_a_nonfinite_gradient_gives_a_nonfinite_norm():
    model = _model_with_gradients(1)
    next(model.parameters()).grad[0, 0] = float("nan")
    assert math.isnan(scale_and_clip_gradients(model, 0.5, 1.0))
