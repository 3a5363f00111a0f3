"""Data loading for the recipes: rank-sharded, resumable micro-batches that skipped records never empty.

Workers turn records into samples one at a time (a StatefulDataLoader with ``batch_size=None``, over a
map-style dataset in ``DistributedSampler`` order, or over a stream: ``stream_outcomes``); the main
process fills each micro-batch with the next usable samples, counting the skipped records it passes, and
collates it. The loader's position therefore always sits right after the last record a step consumed, so a
saved state resumes exactly: no record is seen twice or skipped, whatever was skipped before.
"""

import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset, DistributedSampler, IterableDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from qwenvl_data.datasets import WeightedMixture
from qwenvl_data.datasets._processing import sample_or_skip
from qwenvl_data.datasets._stats import SkippedRecord
from qwenvl_data.errors import SampleError
from qwenvl_data.training._config import build
from qwenvl_data.training._distributed import rank_and_world
from qwenvl_data.training._mixture_config import mixture_entries
from qwenvl_data.training._refusal import ConfigError
from qwenvl_data.training._skips import SkipLedger
from qwenvl_data.training._stream_loader import sample_loader, stream_outcomes

# torchdata 0.11's StatefulDataLoader calls torch.set_vital, which torch 2.13 deprecated: a warning every run that
# says nothing about the run. Only that warning, from that caller, is silenced.
warnings.filterwarnings("ignore", message=r"'set_vital' is deprecated", category=UserWarning,
                        module=r"torchdata\.stateful_dataloader")  # fmt: skip


def build_dataset(cfg: DictConfig, model_transform: Any, *, seed: int, shuffle: bool = True) -> Dataset:
    """The ``dataset`` config: one ``_component_``, or a weighted mixture (``WeightedMixture``) in either spelling
    (a list of them with a ``weight`` each, or ``dataset.mixture`` + ``dataset.weights``: training/_mixture_config.py).

    Raises:
        ValueError: a mixture spelled wrong (naming the key and the value), or any error of ``build``.
    """
    entries = mixture_entries(cfg.get("dataset"))
    if entries is None:
        return build(cfg, "dataset", model_transform)
    datasets = [entry.build(model_transform) for entry in entries]
    return WeightedMixture(datasets, [entry.weight for entry in entries], seed=seed, shuffle=shuffle,
                           names=[entry.name for entry in entries])  # fmt: skip


def rank_sampler(dataset: Dataset, shuffle: bool, seed: int) -> DistributedSampler:
    """This rank's share of a map-style dataset, in an order that depends only on ``seed`` and the epoch."""
    rank, world = rank_and_world()
    return DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)


def build_dataloader(
    dataset: Dataset,
    collate_fn: Callable[[list[Any]], Any] | None,
    batch_size: int | None,
    *,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
) -> StatefulDataLoader:
    """Per-rank loader of a map-style dataset whose position can be saved and restored exactly.

    The sampler is a DistributedSampler on every world size (also 1), so the global batch of step
    s over N ranks holds the same samples as one rank with N times the batch size, and the
    shuffle order depends only on `seed` and the epoch (call `loader.sampler.set_epoch(epoch)`).
    Tail samples that do not fill one sample per rank are dropped, never repeated.

    Args:
        batch_size: samples per rank per micro-batch; None yields single samples, uncollated.
    """
    return StatefulDataLoader(
        dataset, batch_size=batch_size, sampler=rank_sampler(dataset, shuffle, seed), collate_fn=collate_fn,
        num_workers=num_workers,
        drop_last=False,
    )  # fmt: skip


class Outcomes(Dataset):
    """``dataset[i]`` as the training loop needs it: the sample, or a ``SkippedRecord`` saying why there is none
    (``sample_or_skip``)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict | SkippedRecord:
        return sample_or_skip(self.dataset, index)


class RefillingBatches:
    """Micro-batches of ``batch_size`` usable samples per rank, each refilled past skipped records.

    Steps per epoch: an epoch plans ``ceil(records per rank / batch_size)`` micro-batches (what it gives when
    nothing is skipped; a stream of unknown length plans none: the recipe's ``max_steps_per_epoch`` decides);
    a skipped record is replaced by the next one, so with skips the records run out earlier (a stream never
    runs out), and the epoch ends there: its last micro-batch can hold fewer samples, and it has fewer steps
    than planned (the LR schedule and progress bar keep the plan).

    Args:
        dataset: map-style dataset (``ChatDataset``, synthetic, or any that returns None for a skipped record:
            ``sample_or_skip``),
            or a ``StreamingChatDataset`` / ``WeightedMixture`` (read as one unbounded stream).
        collate_fn: list of samples -> batch.
        batch_size: usable samples per micro-batch.
        ledger: counts every record consumed (and stops the run past ``max_skip_fraction``).
        shuffle, seed, num_workers: as ``build_dataloader``.
    """

    def __init__(
        self,
        dataset: Dataset,
        collate_fn: Callable[[list[Any]], dict[str, torch.Tensor]],
        batch_size: int,
        ledger: SkipLedger,
        *,
        shuffle: bool,
        seed: int,
        num_workers: int = 0,
    ) -> None:
        self.stream = isinstance(dataset, IterableDataset)
        if self.stream:
            self.loader, self._stream_records = stream_outcomes(
                dataset, seed=seed, shuffle=shuffle, num_workers=num_workers
            )
        else:
            self.loader = sample_loader(Outcomes(dataset), rank_sampler(dataset, shuffle, seed), num_workers)
        self.collate_fn, self.batch_size, self.ledger = collate_fn, batch_size, ledger
        self._records: Iterator[Any] | None = None

    def planned_steps(self, grad_accum: int, max_steps_per_epoch: int | None) -> int:
        """Optimizer steps per epoch: the micro-batches an epoch gives when no record is skipped, over
        ``grad_accum``, capped by ``max_steps_per_epoch``. A stream's epoch is ``max_steps_per_epoch`` steps
        whether or not its length is known (it reads on, starting its data again where it is shorter, and says
        so: see ``SkipLedger``); a stream of unknown length needs it.

        Raises:
            ValueError: a stream of unknown length without ``max_steps_per_epoch``, or less than one step.
        """
        world = rank_and_world()[1]
        if not self.stream:
            planned = math.ceil(len(self.loader.sampler) / self.batch_size)
        elif max_steps_per_epoch:
            planned = max_steps_per_epoch * grad_accum
        elif self._stream_records is not None:
            planned = self._stream_records // (world * self.batch_size)
        else:
            raise ConfigError("the dataset is a stream of unknown length (JSON Lines, JSON or tar shards, or a "
                             "mixture): set `max_steps_per_epoch`")  # fmt: skip
        steps = planned // grad_accum
        if steps == 0:
            raise ConfigError(
                f"the dataset holds fewer than one step of {self.batch_size} x {grad_accum} x {world} ranks samples: "
                "lower batch_size / gradient_accumulation_steps"
                + (", or set max_steps_per_epoch (a stream then reads its data again)" if self.stream else "")
            )
        return min(steps, max_steps_per_epoch or steps)

    def start_epoch(self, epoch: int, state: dict[str, Any] | None = None) -> None:
        """Begin ``epoch``'s records, or continue from ``state_dict()`` of a saved run. A stream is never
        restarted: its epochs read on where the last one stopped (see ``stream_outcomes``)."""
        if not self.stream:
            self.loader.sampler.set_epoch(epoch)
        if state is not None:
            self.loader.load_state_dict(state)
            self._records = None
        if self._records is None or not self.stream:
            self._records = iter(self.loader)

    def next_batch(self) -> dict[str, torch.Tensor] | None:
        """The next micro-batch, or None when this epoch's records ran out before one usable sample.

        A sample the collator refuses (``SampleError``, e.g. longer than its ``max_seq_len``) is counted as
        skipped and replaced like any other.
        """
        samples = self._fill([])
        while samples:
            try:
                return self.collate_fn(samples)
            except SampleError:
                usable = [sample for sample in samples if self._collates_alone(sample)]
                if len(usable) == len(samples):
                    raise  # no single sample is at fault: the batch as a whole is
                samples = self._fill(usable)
        return None

    def _fill(self, samples: list[dict]) -> list[dict]:
        """``samples`` topped up to ``batch_size`` from the next records (fewer when they run out)."""
        while len(samples) < self.batch_size:
            try:
                outcome = next(self._records)
            except StopIteration:
                break
            sample = self.ledger.record(outcome)
            if sample is not None:
                samples.append(sample)
        return samples

    def _collates_alone(self, sample: dict) -> bool:
        try:
            self.collate_fn([sample])
        except SampleError as error:
            self.ledger.reject(sample, error)
            return False
        return True

    def state_dict(self) -> dict[str, Any]:
        """The position right after the last record consumed."""
        return self.loader.state_dict()

    @staticmethod
    def sizes(batch: dict[str, torch.Tensor]) -> tuple[int, int | torch.Tensor]:
        """(rows, real tokens: ``attention_mask``'s, or every token when the collator gives no mask)."""
        tokens = batch["tokens"]
        return tokens.shape[0], batch["attention_mask"].sum() if "attention_mask" in batch else tokens.numel()


def move_to_device(batch: dict[str, Any], device: torch.device, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Tensors to `device`, floating ones (pixel values) to the model's `dtype`; other values as they are."""

    def move(value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        if dtype is not None and value.is_floating_point():
            return value.to(device=device, dtype=dtype, non_blocking=True)
        return value.to(device, non_blocking=True)

    return {key: move(value) for key, value in batch.items()}
