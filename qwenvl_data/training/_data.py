"""Data loading for the recipes: rank-sharded, resumable (StatefulDataLoader) batches on the right device."""

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from qwenvl_data.training._distributed import rank_and_world


def build_dataloader(
    dataset: Dataset,
    collate_fn: Callable[[list[Any]], dict[str, torch.Tensor]],
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
) -> StatefulDataLoader:
    """Per-rank loader whose position can be saved and restored exactly.

    The sampler is a DistributedSampler on every world size (also 1), so the global batch of step
    s over N ranks holds the same samples as one rank with N times the batch size, and the
    shuffle order depends only on `seed` and the epoch (call `loader.sampler.set_epoch(epoch)`).
    Tail samples that do not fill one sample per rank are dropped, never repeated.

    Args:
        batch_size: samples per rank per micro-batch.
    """
    rank, world = rank_and_world()
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
    return StatefulDataLoader(
        dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn, num_workers=num_workers,
        drop_last=False,
    )


def move_to_device(batch: dict[str, Any], device: torch.device, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Tensors to `device`, floating ones (pixel values) to the model's `dtype`; other values as they are."""

    def move(value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        if dtype is not None and value.is_floating_point():
            return value.to(device=device, dtype=dtype, non_blocking=True)
        return value.to(device, non_blocking=True)

    return {key: move(value) for key, value in batch.items()}
