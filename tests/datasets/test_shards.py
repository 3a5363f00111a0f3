"""Streaming over every shard layout (JSON Lines, parquet row groups, a save_to_disk directory, WebDataset
tars): 2 ranks x 2 DataLoader workers read each record exactly once, also with fewer shards than readers;
a stopped loader resumes with exactly the remaining samples; and weighted mixtures draw close to their
weights and resume exactly."""

import io
import json
import tarfile
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from torchdata.stateful_dataloader import StatefulDataLoader

from support.datasets_records import text_record, write_jsonl
from support.media import photo, video_frames
from qwenvl_data.datasets import WeightedMixture, multimodal_chat_dataset, streaming_chat_dataset

NUM_RECORDS = 30


def ids_of(batch: list[dict]) -> list[str]:
    return [sample["id"] for sample in batch]


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    photo(40, 32, seed=seed).save(buffer, format="PNG")
    return buffer.getvalue()


def write_tar(path, start: int, stop: int, by_name: bool = True):
    """WebDataset shard of ``<key>.json`` + ``<key>.png``: the JSON names its image (or, by_name=False, takes it
    in order)."""
    with tarfile.open(path, "w") as tar:
        for i in range(start, stop):
            key = f"{i:06d}"
            record = {"id": f"r{i}", "messages": [{"role": "user", "content": "<image>What is it?"},
                                                  {"role": "assistant", "content": f"answer {i}"}]}  # fmt: skip
            if by_name:
                record["images"] = [f"{key}.png"]
            for name, data in ((f"{key}.json", json.dumps(record).encode()), (f"{key}.png", _png(i))):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def _rows(start, stop):
    return [{"id": f"r{i}", "messages": text_record(i)["messages"]} for i in range(start, stop)]


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """The same 30 records in each layout, as (source, data_files) pairs."""
    root = tmp_path_factory.mktemp("shards")
    jsonl = [write_jsonl(root / f"part{p}.jsonl", [text_record(i) for i in range(p * 10, p * 10 + 10)])
             for p in range(3)]  # fmt: skip
    parquet = root / "train.parquet"
    pq.write_table(pa.Table.from_pylist(_rows(0, NUM_RECORDS)), parquet, row_group_size=6)  # 5 row groups
    import datasets

    hf_dir = root / "hf"
    datasets.Dataset.from_list(_rows(0, NUM_RECORDS)).save_to_disk(str(hf_dir), num_shards=2)
    for p in range(2):
        write_tar(root / f"shard{p}.tar", p * 15, p * 15 + 15)
    return {
        "jsonl": ("jsonl", [str(p) for p in jsonl]),
        "parquet": ("parquet", str(parquet)),
        "hf_dir": (str(hf_dir), None),
        "tar": ("webdataset", str(root / "shard*.tar")),
    }


def make_loader(source, data_files, rank, **options):
    dataset = streaming_chat_dataset(
        None, source=source, data_files=data_files, seed=7, shuffle_buffer_size=4, rank=rank, world_size=2, **options
    )
    return StatefulDataLoader(dataset, batch_size=2, num_workers=2, collate_fn=ids_of)


def read_all(loaders):
    return [sample_id for loader in loaders for batch in loader for sample_id in batch]


@pytest.mark.parametrize("layout", ["jsonl", "parquet", "hf_dir", "tar"])
def test_two_ranks_two_workers_read_every_record_once(layouts, layout):
    source, files = layouts[layout]
    seen = read_all(make_loader(source, files, rank) for rank in (0, 1))
    assert Counter(seen) == Counter(f"r{i}" for i in range(NUM_RECORDS))


def test_fewer_shards_than_readers_splits_records_inside_a_shard(layouts):
    """One JSON Lines file (1 shard) and two tars (2 shards) over 4 readers: still every record exactly once."""
    source, files = layouts["jsonl"]
    seen = read_all(make_loader(source, files[0], rank) for rank in (0, 1))
    assert Counter(seen) == Counter(f"r{i}" for i in range(10))
    source, files = layouts["tar"]
    per_rank = [read_all([make_loader(source, files, rank)]) for rank in (0, 1)]
    assert Counter(per_rank[0] + per_rank[1]) == Counter(f"r{i}" for i in range(NUM_RECORDS))
    assert all(per_rank)  # both ranks got records although there are only two shards for four readers


def test_tar_media_by_name_and_in_order_give_the_same_images(tmp_path):
    named = streaming_chat_dataset(None, data_files=str(write_tar(tmp_path / "a.tar", 0, 3)), shuffle_buffer_size=1)
    ordered = streaming_chat_dataset(
        None, data_files=str(write_tar(tmp_path / "b.tar", 0, 3, by_name=False)), shuffle_buffer_size=1
    )
    for a, b, i in zip(named, ordered, range(3), strict=True):
        images = [[p["content"] for p in m.content if p["type"] == "image"]
                  for m in (a["messages"][0], b["messages"][0])]  # fmt: skip
        assert images[0] == images[1] == [_png(i)]


def test_tar_video_member_is_decoded(tmp_path):
    import av

    clip = tmp_path / "clip.mp4"
    with av.open(str(clip), "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for frame in video_frames(8, 64, 48):
            container.mux(stream.encode(av.VideoFrame.from_image(frame)))
        container.mux(stream.encode())
    record = {"messages": [{"role": "user", "content": "<video>What happens?"}, {"role": "assistant", "content": "x"}],
              "videos": ["000000.mp4"]}  # fmt: skip
    with tarfile.open(tmp_path / "v.tar", "w") as tar:
        for name, data in (("000000.json", json.dumps(record).encode()), ("000000.mp4", clip.read_bytes())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    sample = next(iter(streaming_chat_dataset(None, data_files=str(tmp_path / "v.tar"), video_fps=2.0)))
    video = next(p for p in sample["messages"][0].content if p["type"] == "video")
    assert video["content"] == clip.read_bytes() and video["fps"] == 2.0  # decoded lazily, by the model transform
    from qwenvl_data.image import Qwen2_5_VLImageTransform

    _, grid, second_per_grid_ts = Qwen2_5_VLImageTransform().encode_video(video["content"], fps=video["fps"])
    assert grid[0, 0].item() == 2 and second_per_grid_ts.item() == 1.0  # 2 s at 2 fps: 4 frames, 2 patches


@pytest.mark.parametrize("layout", ["parquet", "tar"])
def test_resume_mid_epoch_yields_exactly_the_remaining_samples(layouts, layout):
    source, files = layouts[layout]
    for rank in (0, 1):
        full = list(make_loader(source, files, rank, epochs=2))
        interrupted = make_loader(source, files, rank, epochs=2)
        iterator = iter(interrupted)
        head = [next(iterator) for _ in range(5)]  # mid-way through the first epoch's shards and buffer
        state = interrupted.state_dict()
        del iterator
        resumed = make_loader(source, files, rank, epochs=2)
        resumed.load_state_dict(state)
        assert head + list(resumed) == full, f"rank {rank}"


def test_shuffle_is_seeded_and_differs_per_epoch(layouts):
    source, files = layouts["parquet"]

    def order(seed):
        dataset = streaming_chat_dataset(
            None, source=source, data_files=files, seed=seed, shuffle_buffer_size=8, epochs=2
        )
        return [s["id"] for s in dataset]

    first = order(1)
    assert first == order(1) and first != order(2)
    assert sorted(first[:NUM_RECORDS]) == sorted(first[NUM_RECORDS:]) and first[:NUM_RECORDS] != first[NUM_RECORDS:]
    assert first[:NUM_RECORDS] != [f"r{i}" for i in range(NUM_RECORDS)]


def _mixture(layouts, parquet_p):
    """70% map-style JSON Lines (ids r..), 20% streamed parquet (ids p..), 10% streamed tars (samples with an image)."""
    images = multimodal_chat_dataset(None, source="jsonl", data_files=layouts["jsonl"][1])
    text = streaming_chat_dataset(None, source="parquet", data_files=str(parquet_p), shuffle_buffer_size=4)
    tars = streaming_chat_dataset(None, source="webdataset", data_files=layouts["tar"][1], shuffle_buffer_size=4)
    return WeightedMixture([images, text, tars], [7, 2, 1], seed=5, rank=0, world_size=2)


def source_of(sample: dict) -> str:
    if any(part["type"] == "image" for part in sample["messages"][0].content):
        return "tar"
    return "parquet" if sample["id"].startswith("p") else "map"


def sources_and_ids(batch: list[dict]) -> list[tuple[str, str]]:
    return [(source_of(s), s["id"]) for s in batch]


def test_mixture_draws_close_to_its_weights_and_resumes_exactly(layouts, tmp_path):
    parquet_p = tmp_path / "p.parquet"
    rows = [{**row, "id": "p" + row["id"][1:]} for row in _rows(0, NUM_RECORDS)]
    pq.write_table(pa.Table.from_pylist(rows), parquet_p, row_group_size=5)

    def loader():
        mixture = _mixture(layouts, parquet_p)
        return StatefulDataLoader(mixture, batch_size=10, num_workers=2, collate_fn=sources_and_ids)

    stream = iter(loader())
    drawn = [name for _ in range(150) for name, _ in next(stream)]  # 1500 draws: every dataset wraps around
    counts = Counter(drawn)
    for name, weight in (("map", 0.7), ("parquet", 0.2), ("tar", 0.1)):
        assert abs(counts[name] / len(drawn) - weight) < 0.03, counts
    first = loader()
    iterator = iter(first)
    head = [next(iterator) for _ in range(9)]
    state = first.state_dict()
    del iterator
    resumed = loader()
    resumed.load_state_dict(state)
    tail = iter(resumed)
    straight = iter(loader())
    assert head + [next(tail) for _ in range(21)] == [next(straight) for _ in range(30)]


def test_tar_samples_without_or_with_broken_json_are_named_or_counted(tmp_path):
    path = tmp_path / "bad.tar"
    members = [("000000.png", _png(0)), ("000001.json", b'{"id": "broken'), ("000001.png", _png(1))]
    with tarfile.open(write_tar(tmp_path / "good.tar", 2, 3), "r") as good, tarfile.open(path, "w") as tar:
        for name, data in members + [(m.name, good.extractfile(m).read()) for m in good.getmembers()]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    skipping = streaming_chat_dataset(None, data_files=str(path), on_error="skip", shuffle_buffer_size=1)
    assert [s["id"] for s in skipping] == ["r2"]
    assert skipping.stats["bad_conversation"] == 2
    with pytest.raises(Exception, match=r"sample bad\.tar#0 \(000000\).*no layout matches.*tar_members"):
        list(streaming_chat_dataset(None, data_files=str(path), shuffle_buffer_size=1))
