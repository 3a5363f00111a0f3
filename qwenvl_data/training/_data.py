"""Data loading for the recipes: rank-sharded, resumable (StatefulDataLoader) batches on the right device."""

from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import Dataset, DistributedSampler, IterableDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from qwenvl_data.datasets import WeightedMixture
from qwenvl_data.training._config import build, build_node
from qwenvl_data.training._distributed import rank_and_world
from qwenvl_data.training._stream_loader import StreamLoader


def build_dataset(cfg: DictConfig, model_transform: Any, *, seed: int, shuffle: bool = True) -> Dataset:
    """The ``dataset`` config: one ``_component_``, or a list of them with a ``weight`` each (a ``WeightedMixture``).

    Raises:
        ValueError: a list item without a ``weight`` (naming it), or any error of ``build``.
    """
    if not isinstance(cfg.get("dataset"), ListConfig):
        return build(cfg, "dataset", model_transform)
    datasets, weights = [], []
    for i, item in enumerate(cfg.dataset):
        spec = OmegaConf.to_container(item, resolve=True) if isinstance(item, DictConfig) else None
        if spec is None or "weight" not in spec:
            raise ValueError(f"config key `dataset[{i}]`: each dataset of a mixture needs a `weight`, got {item!r}")
        weights.append(spec.pop("weight"))
        datasets.append(build_node(OmegaConf.create(spec), f"dataset[{i}]", model_transform))
    return WeightedMixture(datasets, weights, seed=seed, shuffle=shuffle)


def build_dataloader(
    dataset: Dataset,
    collate_fn: Callable[[list[Any]], dict[str, torch.Tensor]],
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
) -> StatefulDataLoader | StreamLoader:
    """Per-rank loader whose position can be saved and restored exactly.

    Streaming datasets and mixtures (``IterableDataset``) get a ``StreamLoader``: one unbounded stream.
    Map-style datasets get the loader below.

    The sampler is a DistributedSampler on every world size (also 1), so the global batch of step
    s over N ranks holds the same samples as one rank with N times the batch size, and the
    shuffle order depends only on `seed` and the epoch (call `loader.sampler.set_epoch(epoch)`).
    Tail samples that do not fill one sample per rank are dropped, never repeated.

    Args:
        batch_size: samples per rank per micro-batch.
    """
    if isinstance(dataset, IterableDataset):
        return StreamLoader(dataset, collate_fn, batch_size, seed=seed, shuffle=shuffle, num_workers=num_workers)
    rank, world = rank_and_world()
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
    return StatefulDataLoader(
        dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn, num_workers=num_workers,
        drop_last=False,
    )


def batches_per_epoch(loader: StatefulDataLoader | StreamLoader) -> int | None:
    """Micro-batches per rank in one pass over the data; None for a stream of unknown length."""
    return loader.batches_per_epoch() if isinstance(loader, StreamLoader) else len(loader)


def start_epoch(loader: StatefulDataLoader | StreamLoader, epoch: int) -> None:
    """Map-style: reshuffle for ``epoch``. Streams: nothing (the stream reads on; see ``StreamLoader``)."""
    if not isinstance(loader, StreamLoader):
        loader.sampler.set_epoch(epoch)


def move_to_device(batch: dict[str, Any], device: torch.device, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Tensors to `device`, floating ones (pixel values) to the model's `dtype`; other values as they are."""

    def move(value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        if dtype is not None and value.is_floating_point():
            return value.to(device=device, dtype=dtype, non_blocking=True)
        return value.to(device, non_blocking=True)

    return {key: move(value) for key, value in batch.items()}
