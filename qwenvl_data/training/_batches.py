"""What the training loop reads: one ``Batches`` interface over padded, packed, streamed and mixed data.

The loop never asks which kind it holds: it plans its steps, starts each epoch (or continues a saved one),
takes micro-batches until they run out, and saves the position.

| config                                   | batches                                   |
|------------------------------------------|-------------------------------------------|
| a map-style dataset                      | ``RefillingBatches`` (training/_data.py)  |
| a streaming dataset, a list (a mixture)  | ``RefillingBatches`` over one stream      |
| ``dataset.packed: true`` (either kind)   | ``PackedBatches`` (training/_packed_data.py) |
"""

from typing import Any, Protocol

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from qwenvl_data.datasets import WeightedMixture
from qwenvl_data.rope import PositionRule
from qwenvl_data.training._data import RefillingBatches, build_dataset
from qwenvl_data.training._packed_data import packed_batches, split_packing_options
from qwenvl_data.training._settings import RecipeSettings
from qwenvl_data.training._skips import SkipLedger


class Batches(Protocol):
    """This rank's micro-batches, resumable exactly; every record consumed is counted by the run's ledger."""

    #: True: epochs read on where the last one stopped (a stream, the packer), so a resume at an epoch boundary
    #: still restores the position; False: each epoch starts over (reshuffled), a finished epoch's state is spent.
    stream: bool

    def planned_steps(self, grad_accum: int, max_steps_per_epoch: int | None) -> int:
        """Optimizer steps per epoch (raises ValueError when it cannot be known or is zero)."""

    def start_epoch(self, epoch: int, state: dict[str, Any] | None = None) -> None:
        """Begin ``epoch``, or continue from a ``state_dict()`` of a saved run."""

    def next_batch(self) -> dict[str, torch.Tensor] | None:
        """The next collated micro-batch; None when this epoch's records ran out."""

    def state_dict(self) -> dict[str, Any]:
        """The position right after the last record consumed (small, no samples)."""

    def sizes(self, batch: dict[str, torch.Tensor]) -> tuple[int, int | torch.Tensor]:
        """(samples, input tokens) in one of its batches, for the throughput figures."""


def build_training_dataset(cfg: DictConfig, transform: Any, settings: RecipeSettings) -> tuple[Dataset, int | None]:
    """The ``dataset`` config built (one ``_component_``, or a weighted mixture in either spelling), before the model.

    Returns:
        (the dataset, the packing buffer size when ``dataset.packed: true``, else None).
    """
    node, buffer_size = cfg.dataset, None
    if isinstance(node, DictConfig):
        node, buffer_size = split_packing_options(node)
    dataset = build_dataset(OmegaConf.create({"dataset": node}), transform, seed=settings.seed, shuffle=settings.shuffle)
    return dataset, buffer_size


def build_batches(
    dataset: Dataset,
    packed_buffer_size: int | None,
    *,
    transform: Any,
    collate_fn: Any,
    settings: RecipeSettings,
    ledger: SkipLedger,
    position_rule: PositionRule,
) -> Batches:
    """The micro-batches of ``dataset``: packed rows when ``packed_buffer_size`` is set, else padded batches
    (``collate_fn``); ``position_rule``: the model's family's video position rule, for the packed rows. The
    ``ledger`` counts a mixture's records per dataset too, in the mixture's order."""
    if isinstance(dataset, WeightedMixture) and len(dataset.names) > 1:
        ledger.expect_sources(dataset.names)
    if packed_buffer_size is not None:
        return packed_batches(
            dataset, transform, settings.batch_size, buffer_size=packed_buffer_size, shuffle=settings.shuffle,
            seed=settings.seed, num_workers=settings.num_workers, ledger=ledger, position_rule=position_rule,
        )  # fmt: skip
    return RefillingBatches(dataset, collate_fn, settings.batch_size, ledger, shuffle=settings.shuffle,
                            seed=settings.seed, num_workers=settings.num_workers)  # fmt: skip
