"""Streaming dataset: rank x worker sharding, seeded shuffle buffer, epochs and exact resume by sample id
(StatefulDataLoader with workers, and the torchdata.nodes pipeline)."""

import pytest
from support.datasets_records import text_record, write_jsonl
from torchdata.nodes import Batcher, Loader
from torchdata.stateful_dataloader import StatefulDataLoader

from qwenvl_data.datasets import streaming_chat_dataset, streaming_chat_nodes

NUM_RECORDS = 37  # not a multiple of the shard count: shards differ by one record


def ids_of(batch: list[dict]) -> list[str]:
    return [sample["id"] for sample in batch]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("stream") / "corpus.jsonl"
    return write_jsonl(path, [text_record(i) for i in range(NUM_RECORDS)])


def make_loader(corpus, rank):
    dataset = streaming_chat_dataset(
        None, data_files=str(corpus), seed=7, shuffle_buffer_size=8, rank=rank, world_size=2
    )
    return StatefulDataLoader(dataset, batch_size=3, num_workers=2, collate_fn=ids_of)


def test_two_ranks_with_workers_read_every_record_exactly_once_shuffled(corpus):
    seen = [sample_id for rank in (0, 1) for batch in make_loader(corpus, rank) for sample_id in batch]
    assert sorted(seen) == sorted(f"r{i}" for i in range(NUM_RECORDS))
    assert seen != [f"r{i}" for i in range(NUM_RECORDS)]


def test_resume_after_k_batches_yields_exactly_the_remaining_batches(corpus):
    for rank in (0, 1):
        full = list(make_loader(corpus, rank))
        for k in (1, 4):
            interrupted = make_loader(corpus, rank)
            iterator = iter(interrupted)
            head = [next(iterator) for _ in range(k)]
            state = interrupted.state_dict()
            del iterator
            resumed = make_loader(corpus, rank)
            resumed.load_state_dict(state)
            assert head + list(resumed) == full, f"rank {rank}, resumed after {k} batches"


def test_same_seed_same_order_and_each_epoch_reshuffles(corpus):
    def order(epochs, seed=3):
        ds = streaming_chat_dataset(None, data_files=str(corpus), seed=seed, shuffle_buffer_size=16, epochs=epochs)
        return [s["id"] for s in ds]

    two_epochs = order(2)
    assert order(1) == two_epochs[:NUM_RECORDS] == order(1)
    assert sorted(two_epochs[NUM_RECORDS:]) == sorted(two_epochs[:NUM_RECORDS])
    assert two_epochs[NUM_RECORDS:] != two_epochs[:NUM_RECORDS]
    assert order(1, seed=4) != order(1)


def test_buffer_of_one_keeps_file_order_and_set_epoch_is_deterministic(corpus):
    ds = streaming_chat_dataset(None, data_files=str(corpus), shuffle_buffer_size=1)
    assert [s["id"] for s in ds] == [f"r{i}" for i in range(NUM_RECORDS)]
    shuffled = streaming_chat_dataset(None, data_files=str(corpus), shuffle_buffer_size=16, seed=1, epochs=2)
    second_epoch = [s["id"] for s in shuffled][NUM_RECORDS:]
    shuffled.set_epoch(1)
    shuffled.epochs = 1
    assert [s["id"] for s in shuffled] == second_epoch


def test_resume_with_other_sharding_is_refused(corpus):
    ds = streaming_chat_dataset(None, data_files=str(corpus), rank=0, world_size=2)
    iterator = iter(ds)
    next(iterator)
    other = streaming_chat_dataset(None, data_files=str(corpus), rank=1, world_size=2)
    other.load_state_dict(ds.state_dict())
    with pytest.raises(ValueError, match="keep the data files, world size and num_workers"):
        next(iter(other))


def test_skipped_records_are_not_yielded_and_are_counted(tmp_path):
    records = [text_record(0), '{"id": "broken"', {"id": "r-empty", "messages": []}, text_record(3)]
    path = write_jsonl(tmp_path / "d.jsonl", records)
    ds = streaming_chat_dataset(None, data_files=str(path), on_error="skip", shuffle_buffer_size=1)
    assert [s["id"] for s in ds] == ["r0", "r3"]
    assert ds.stats["bad_conversation"] == 2
    node = streaming_chat_nodes(None, data_files=str(path), on_error="skip", shuffle_buffer_size=1, num_workers=2)
    assert [s["id"] for s in Loader(node)] == ["r0", "r3"]
    assert node.stats.as_dict()["bad_conversation"] == 2


@pytest.mark.parametrize("num_workers", [0, 2], ids=["inline", "threads"])
def test_nodes_pipeline_shards_and_resumes_exactly(corpus, num_workers):
    def loader(rank):
        node = streaming_chat_nodes(
            None, data_files=str(corpus), seed=5, shuffle_buffer_size=8, rank=rank, world_size=2,
            num_workers=num_workers,
        )
        return Loader(Batcher(node, batch_size=4, drop_last=False))

    runs = {rank: [ids_of(b) for b in loader(rank)] for rank in (0, 1)}
    everything = sorted(i for batches in runs.values() for batch in batches for i in batch)
    assert everything == sorted(f"r{i}" for i in range(NUM_RECORDS))
    for rank, full in runs.items():
        interrupted = loader(rank)
        iterator = iter(interrupted)
        head = [ids_of(next(iterator)) for _ in range(2)]
        state = interrupted.state_dict()
        resumed = loader(rank)
        resumed.load_state_dict(state)
        assert head + [ids_of(b) for b in resumed] == full


def test_nodes_loader_reshuffles_each_epoch(corpus):
    loader = Loader(streaming_chat_nodes(None, data_files=str(corpus), seed=5, shuffle_buffer_size=16))
    first, second = [s["id"] for s in loader], [s["id"] for s in loader]
    assert sorted(first) == sorted(second) and first != second
