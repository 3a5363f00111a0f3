"""transformers' PIL-backend Qwen2-VL image processor, the bit-exact reference for the image/video transform."""

import functools

import torch
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil


@functools.cache
def _processor(min_pixels: int, max_pixels: int) -> Qwen2VLImageProcessorPil:
    return Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)


def reference_image(image, min_pixels: int = 3136, max_pixels: int = 1003520) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixel_values float32 [N, 1176], image_grid_thw int64 [1, 3]) of one image, by transformers."""
    out = _processor(min_pixels, max_pixels)(images=image, return_tensors="pt")
    return out["pixel_values"], out["image_grid_thw"]


def frame_planes(
    pixel_values: torch.Tensor, grid_thw: torch.Tensor, temporal_patch_size: int = 2, patch: int = 14
) -> torch.Tensor:
    """[T', slot, C, H, W] pixels back out of the flat patch layout (rows t, block row, block col, 2x2;
    columns C, slot, patch, patch), so a frame can be compared with an image's output."""
    grid_t, grid_h, grid_w = (int(v) for v in grid_thw[0])
    blocks = pixel_values.view(grid_t, grid_h // 2, grid_w // 2, 2, 2, 3, temporal_patch_size, patch, patch)
    # -> t, slot, C, block row, row in block, patch row, block col, col in block, patch col
    planes = blocks.permute(0, 6, 5, 1, 3, 7, 2, 4, 8)
    return planes.reshape(grid_t, temporal_patch_size, 3, grid_h * patch, grid_w * patch)
