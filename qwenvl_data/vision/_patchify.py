"""Resized RGB frames -> normalized patches in the vision encoder's flat layout, in one pass over the output.

Row order of the output: temporal group, merged-block row, merged-block column, row and column inside the
merge block. Column order: channel, temporal slot, patch row, patch column. An image fills every temporal slot
with itself; a video fills slot t of group g with frame ``g * temporal_patch_size + t``.

Why it is fast and still bit-identical to the reference (which rescales in float64, rounds to float32, then
normalizes in float32 and finally rearranges, each step a pass over the whole image):
- float32 ``u / 255`` equals float32(float64(u) * (1 / 255)) for every uint8 u (the tests cover all 256 values
  per channel), and subtracting the mean and dividing by the std are the same float32 operations.
- The work goes a band of merge-block rows at a time, small enough to stay in the CPU cache: the arithmetic
  runs on the band's contiguous channel planes (long vector loops), one copy puts it in patch order, and one
  broadcasting assignment writes it to every temporal slot it fills. The output (8 bytes per input byte in
  float32) is the only large memory traffic, written once, front to back.
- numpy, not torch, runs the loop: torch spreads each band's small operations over its intra-op threads,
  measured 10-20x slower whenever another process holds a core (a shared or busy machine).
"""

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

# Bytes of float32 pixels per band: big enough that per-call overhead vanishes, small enough to stay in L2.
_SCRATCH_BYTES = 1 << 20
# Output dtypes, and the numpy dtype holding them (bfloat16 as its 16 raw bits; numpy has no bfloat16).
_STORAGE = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16, torch.bfloat16: np.uint16}
OUTPUT_DTYPES = tuple(_STORAGE)


def patchify(
    frames: Sequence[Image.Image],
    *,
    patch_size: int,
    merge_size: int,
    temporal_patch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    dtype: torch.dtype,
) -> torch.Tensor:
    """Normalized patches of same-size RGB frames.

    Args:
        frames (Sequence[PIL.Image.Image]): RGB frames of one size, both sides multiples of
            ``patch_size * merge_size``, count a multiple of ``temporal_patch_size``. Repeating the same object
            in consecutive slots (an image in every temporal slot, a padded last frame) is computed once.
        patch_size (int): side of a patch in pixels (14).
        merge_size (int): side of the block of patches the model merges into one token (2).
        temporal_patch_size (int): frames per temporal patch (2).
        mean (Sequence[float]): per-channel mean of the rescaled [0, 1] pixels (3 values).
        std (Sequence[float]): per-channel std (3 values).
        dtype (torch.dtype): one of ``OUTPUT_DTYPES``; the float32 values rounded once to it.

    Returns:
        torch.Tensor: ``dtype`` [T * H * W, 3 * temporal_patch_size * patch_size**2] with T = frames /
        temporal_patch_size, H and W the patch grid.
    """
    width, height = frames[0].size
    block = patch_size * merge_size
    rows, cols = height // block, width // block
    groups = len(frames) // temporal_patch_size
    shape = (groups, rows, cols, merge_size, merge_size, 3, temporal_patch_size, patch_size, patch_size)
    out = np.empty(shape, _STORAGE[dtype])  # numpy asks the kernel for huge pages: faster first touch
    band_rows = min(rows, max(1, _SCRATCH_BYTES // (cols * block * block * 3 * 4)))
    planar = np.empty((3, band_rows * block, cols * block), np.float32)
    patches = np.empty((band_rows, cols, merge_size, merge_size, 3, 1, patch_size, patch_size), np.float32)
    mean = np.asarray(mean, np.float32).reshape(3, 1, 1)
    std = np.asarray(std, np.float32).reshape(3, 1, 1)
    for group in range(groups):
        slots = frames[group * temporal_patch_size : (group + 1) * temporal_patch_size]
        for first, stop_slot in _runs_of_same_frame(slots):
            planes = [np.asarray(band) for band in slots[first].split()]
            for start in range(0, rows, band_rows):
                stop = min(start + band_rows, rows)
                values = planar[:, : (stop - start) * block]
                for channel, plane in enumerate(planes):
                    np.divide(plane[start * block : stop * block], np.float32(255), out=values[channel])
                np.subtract(values, mean, out=values)
                np.divide(values, std, out=values)
                in_patch_order = patches[: stop - start]
                in_patch_order[..., 0, :, :] = values.reshape(
                    3, stop - start, merge_size, patch_size, cols, merge_size, patch_size
                ).transpose(1, 4, 2, 5, 0, 3, 6)
                if dtype == torch.bfloat16:
                    in_patch_order = _bfloat16_bits(in_patch_order)
                out[group, start:stop, ..., first:stop_slot, :, :] = in_patch_order  # broadcast over slots
    return torch.from_numpy(out.reshape(groups * rows * cols * merge_size * merge_size, -1)).view(dtype)


def _runs_of_same_frame(slots: Sequence[Image.Image]) -> list[tuple[int, int]]:
    """[first, stop) slot ranges holding one frame object: an image fills all slots, a padded clip's last frame
    its trailing ones, and each run is computed once."""
    runs = []
    for slot, frame in enumerate(slots):
        if runs and slots[runs[-1][0]] is frame:
            runs[-1] = (runs[-1][0], slot + 1)
        else:
            runs.append((slot, slot + 1))
    return runs


def _bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """uint32 array whose low 16 bits are ``values`` (float32) rounded to bfloat16, to nearest, ties to even,
    as torch rounds. The values are finite normalized pixels, so adding the rounding bias cannot overflow."""
    bits = values.view(np.uint32)
    rounded = (bits >> 16) & 1
    rounded += 0x7FFF
    rounded += bits
    rounded >>= 16
    return rounded
