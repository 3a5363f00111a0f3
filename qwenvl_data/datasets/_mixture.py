"""Several datasets in one stream, drawn with sampling weights by ``torchdata.nodes.MultiNodeWeightedSampler``.

Each draw picks a dataset with probability ``weight / sum(weights)`` (a seeded ``torch.multinomial`` per
reader) and takes that dataset's next sample. Map-style datasets are read in a seeded ``DistributedSampler``
order over all readers (dropping the tail that does not fill one sample per reader, as the map-style
loader does); streaming datasets through their own sharded record stream. A dataset that runs out starts
its next epoch (a new order), so the mixture never ends: training length is ``max_steps_per_epoch``. With
``keep_skipped`` (the recipes) each such restart is announced by a ``PassStarted`` naming the dataset, and
every outcome of a mixture of several datasets names the one it was drawn from (a sample under ``MIXTURE_SOURCE_KEY``,
a ``SkippedRecord`` as its ``source``), so that the recipes count records read and skipped per dataset.
"""

import functools
from collections.abc import Sequence

from torch.utils.data import Dataset, DistributedSampler
from torchdata.nodes import BaseNode, Mapper, MultiNodeWeightedSampler, SamplerWrapper, StopCriteria

from qwenvl_data.datasets._nodes import DropSkipped, ReaderNodeDataset
from qwenvl_data.datasets._processing import sample_or_skip
from qwenvl_data.datasets._streaming import StreamingChatDataset


class WeightedMixture(ReaderNodeDataset):
    """Samples from several datasets with fixed weights, without end, exactly resumable.

    Args:
        datasets: map-style datasets (``multimodal_chat_dataset``, ``synthetic_vqa_dataset``, any sized
            ``Dataset``) and/or ``StreamingChatDataset`` s (their ``epochs``, ``rank`` and ``world_size`` do not
            apply here: each is read by this mixture's readers and restarts when it runs out).
        weights: one positive number per dataset (relative: 7, 2, 1 is 70/20/10).
        seed: seeds the choice of dataset and the map-style orders.
        shuffle: shuffle map-style datasets (streaming ones shuffle with their own buffer).
        rank, world_size: this process's place; default from ``torch.distributed`` (or 0 of 1).
        names: how restarts and the recipes' reports name each dataset (default ``dataset[i]``; one dataset
            alone: ``dataset``).

    Raises:
        ValueError: mismatched lengths, a weight that is not positive, names not one per dataset or repeated,
            or a map-style dataset with fewer samples than readers.
    """

    def __init__(
        self,
        datasets: Sequence[Dataset],
        weights: Sequence[float],
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(rank, world_size)
        if not datasets or len(datasets) != len(weights):
            raise ValueError(f"need one weight per dataset, got {len(datasets)} datasets and {len(weights)} weights")
        if names is None:
            names = ["dataset"] if len(datasets) == 1 else [f"dataset[{i}]" for i in range(len(datasets))]
        if len(names) != len(datasets) or len(set(names)) != len(names):
            raise ValueError(f"need one distinct name per dataset, got {list(names)} for {len(datasets)} datasets")
        bad = [(name, w) for name, w in zip(names, weights) if not float(w) > 0]
        if bad:
            raise ValueError(f"dataset weights must be > 0, got {', '.join(f'{name}: {w}' for name, w in bad)}")
        self.datasets, self.weights, self.names = list(datasets), [float(w) for w in weights], list(names)
        self.seed, self.shuffle = seed, shuffle

    def _samples(self, number: int, dataset: Dataset, reader: int, num_readers: int) -> DropSkipped:
        """Dataset ``number``'s outcomes for this reader, skipped records and restarts (``PassStarted``) kept;
        each naming its dataset when the recipes count them per dataset (``keep_skipped``, several datasets)."""
        name = self.names[number]
        if isinstance(dataset, StreamingChatDataset):
            node = dataset.samples_node(dataset.records_node(reader, num_readers), keep_skipped=True, name=name)
        else:
            if len(dataset) < num_readers:
                raise ValueError(f"{name}: a dataset of {len(dataset)} samples cannot be split over {num_readers} "
                                 "readers")  # fmt: skip
            sampler = DistributedSampler(  # seed + number: datasets of equal size are not read in the same order
                dataset, num_replicas=num_readers, rank=reader, shuffle=self.shuffle, seed=self.seed + number,
                drop_last=True,
            )  # fmt: skip
            node = DropSkipped(Mapper(SamplerWrapper(sampler), functools.partial(sample_or_skip, dataset)),
                               keep_skipped=True, name=name)  # fmt: skip
        node.names_outcomes = self.keep_skipped and len(self.datasets) > 1
        return node

    def reader_node(self, reader: int, num_readers: int) -> BaseNode:
        sources = {str(i): self._samples(i, d, reader, num_readers) for i, d in enumerate(self.datasets)}
        weights = {str(i): w for i, w in enumerate(self.weights)}
        mixed = MultiNodeWeightedSampler(
            sources, weights, stop_criteria=StopCriteria.CYCLE_FOREVER, rank=reader, world_size=num_readers,
            seed=self.seed,
        )  # fmt: skip
        return DropSkipped(mixed, keep_skipped=self.keep_skipped)  # the datasets count their skips themselves

    @property
    def stats(self) -> dict[str, int]:
        """Skipped samples by cause, summed over the datasets that count them."""
        total: dict[str, int] = {}
        for dataset in self.datasets:
            for cause, count in getattr(dataset, "stats", {}).items():
                total[cause] = total.get(cause, 0) + count
        return total
