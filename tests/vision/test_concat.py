"""concat_rows: the single-threaded pixel concatenation used by the transform and the collator."""

import pytest
import torch

from qwenvl_data.vision._concat import concat_rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int64])
def test_concat_rows_equals_torch_cat_bit_for_bit(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(0)
    parts = [torch.randn(rows, 1176, generator=generator).mul(100).to(dtype) for rows in (4, 16, 1)]
    out = concat_rows(parts)
    assert out.dtype == dtype
    # compare the raw bytes, so that bfloat16/float16 values are checked exactly
    assert torch.equal(out.view(torch.uint8), torch.cat(parts).view(torch.uint8))


def test_concat_rows_of_one_tensor_is_a_copy() -> None:
    pixels = torch.zeros(8, 1176)
    out = concat_rows([pixels])
    out += 1
    assert pixels.sum() == 0
