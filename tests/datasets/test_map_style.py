"""Map-style ChatDataset: lazy per-sample transform over JSONL / JSON / parquet / HF datasets, the
on_error policy with counts that stay right under DataLoader workers, filtering and token budgets."""

import json
import os

import datasets
import pytest
import torch
from support.datasets_records import (
    byte_tokens,
    llava_turns,
    text_record,
    write_jsonl,
    write_photos,
)
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from qwenvl_data.datasets import ChatDataset, JsonlSource, RecordProcessor, multimodal_chat_dataset
from qwenvl_data.errors import (
    InvalidConversationError,
    PlaceholderMismatchError,
    SampleTooLongError,
    UnsafePathError,
)
from qwenvl_data.image import load_image
from qwenvl_data.training import packaged_vocab_transform


def llava_record(i: int) -> dict:
    return {
        "id": f"l{i}",
        "image": f"img{i % 3}.png",
        "conversations": llava_turns(f"<image>\nWhat is in photo {i}?", "colors"),
    }


@pytest.fixture
def llava_dir(tmp_path):
    write_photos(tmp_path, [f"img{i}.png" for i in range(3)])
    write_jsonl(tmp_path / "train.jsonl", [llava_record(i) for i in range(12)])
    (tmp_path / "train.json").write_text(json.dumps([llava_record(i) for i in range(12)]))
    datasets.Dataset.from_list([llava_record(i) for i in range(12)]).to_parquet(str(tmp_path / "train.parquet"))
    return tmp_path


def test_jsonl_index_is_byte_offsets_and_the_transform_runs_only_on_access(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [text_record(i) for i in range(50)] + ['{"truncated": '])
    calls = []

    def counting(sample):
        calls.append(sample["id"])
        return byte_tokens(sample)

    ds = ChatDataset(JsonlSource(path), RecordProcessor(counting, image_dir=tmp_path))
    index_bytes = ds.source.offsets.nbytes + ds.source.lengths.nbytes + ds.source.file_index.nbytes
    assert len(ds) == 51 and index_bytes == 51 * 16
    assert calls == []  # nothing parsed or transformed up front; the malformed last line is not touched yet
    assert ds[7]["tokens"] == list(b"question 7answer 7") and calls == ["r7"]
    with pytest.raises(InvalidConversationError, match=r"sample 50 \(id unknown\): invalid JSON"):
        ds[50]


def test_jsonl_records_read_concurrently_from_threads_are_intact(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    paths = [write_jsonl(tmp_path / f"{part}.jsonl", [text_record(100 * part + i) for i in range(40)]) for part in (0, 1)]
    source = JsonlSource(paths)
    with ThreadPoolExecutor(4) as pool:
        lines = list(pool.map(source.__getitem__, list(range(80)) * 5))
    assert [json.loads(line)["id"] for line in lines] == [f"r{100 * (i // 40) + i % 40}" for i in range(80)] * 5


@pytest.mark.parametrize(
    "source,files", [("jsonl", "train.jsonl"), ("json", "train.json"), ("parquet", "train.parquet")]
)
def test_every_file_source_gives_the_same_samples(llava_dir, tmp_path, source, files):
    ds = multimodal_chat_dataset(
        byte_tokens, source=source, data_files=str(llava_dir / files), cache_dir=str(tmp_path / "hf_cache")
    )
    assert len(ds) == 12
    sample = ds[4]
    assert sample["id"] == "l4"
    assert sample["tokens"] == [256] + list(b"\nWhat is in photo 4?colors")
    assert sample["messages"][0].content[0]["content"] == os.path.realpath(llava_dir / "img1.png")


def test_hf_dataset_object_and_saved_directory(llava_dir, tmp_path):
    string = datasets.Value("string")
    photos = [datasets.Image().encode_example(str(p)) for p in sorted(llava_dir.glob("img*.png"))]
    table = datasets.Dataset.from_dict(
        {
            "images": [[photos[i % 3]] for i in range(6)],
            "messages": [
                [
                    {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": f"q{i}"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": f"a{i}"}]},
                ]
                for i in range(6)
            ],
        },
        features=datasets.Features(
            {
                "images": datasets.Sequence(datasets.Image()),
                "messages": [{"role": string, "content": [{"type": string, "text": string}]}],
            }
        ),
    )
    table.save_to_disk(str(tmp_path / "saved"))
    for source in (table, str(tmp_path / "saved")):
        ds = multimodal_chat_dataset(byte_tokens, source=source)
        sample = ds[2]
        assert sample["id"] == 2 and sample["tokens"] == [256] + list(b"q2a2")
        image = sample["messages"][0].content[0]["content"]
        # Image columns reach our resolver undecoded (a path, or the bytes save_to_disk embedded); the transform
        # loads them lazily
        assert load_image(image).size == (64, 48)


BAD_RECORDS = {  # record -> expected cause
    "unsafe": ({"id": "u", "image": "../../x.png", "conversations": llava_turns("<image>", "a")}, "unsafe_path"),
    "mismatch": (
        {"id": "m", "image": ["img0.png", "img1.png"], "conversations": llava_turns("<image>", "a")},
        "placeholder_mismatch",
    ),
    "role": ({"id": "r", "conversations": [{"from": "robot", "value": "hi"}]}, "bad_conversation"),
    "empty": ({"id": "e", "messages": []}, "bad_conversation"),
    "json": ('{"id": "j", ', "bad_conversation"),
    "long": (
        {"id": "t", "messages": [{"role": "user", "content": "x" * 500}, {"role": "assistant", "content": "y"}]},
        "too_long",
    ),
}


def mixed_records() -> list:
    records = []
    for i, (record, _) in enumerate(BAD_RECORDS.values()):
        records += [llava_record(i), record, llava_record(i + 10)]
    return records


def test_raise_names_the_record_index_id_and_cause(llava_dir):
    path = write_jsonl(llava_dir / "mixed.jsonl", mixed_records())
    ds = multimodal_chat_dataset(byte_tokens, source="jsonl", data_files=str(path), max_tokens=100)
    with pytest.raises(UnsafePathError, match=r"sample 1 \(u\): media path '../../x.png'"):
        ds[1]
    with pytest.raises(PlaceholderMismatchError, match=r"sample 4 \(m\): 1 <image> placeholders, 2 images"):
        ds[4]
    with pytest.raises(SampleTooLongError, match=r"sample 16 \(t\): 501 tokens, budget 100"):
        ds[16]


def expected_skips() -> dict:
    counts = {}
    for _, cause in BAD_RECORDS.values():
        counts[cause] = counts.get(cause, 0) + 1
    return counts


@pytest.mark.parametrize("num_workers,context", [(0, None), (2, "fork"), (2, "spawn")])
def test_skip_returns_none_and_counts_each_cause_across_workers(llava_dir, num_workers, context):
    path = write_jsonl(llava_dir / "mixed.jsonl", mixed_records())
    ds = multimodal_chat_dataset(byte_tokens, source="jsonl", data_files=str(path), on_error="skip", max_tokens=100)
    loader = DataLoader(ds, batch_size=4, num_workers=num_workers, collate_fn=list, multiprocessing_context=context)
    samples = [s for batch in loader for s in batch]
    assert [s is None for s in samples] == [i % 3 == 1 for i in range(len(samples))]
    assert {c: n for c, n in ds.stats.items() if n} == expected_skips()
    assert ds.log_stats(epoch=0).startswith(f"epoch 0: skipped {len(BAD_RECORDS)} records")
    ds.reset_stats()
    assert sum(ds.stats.values()) == 0


def test_filter_fn_keeps_an_index_of_accepted_records_only(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [text_record(i) for i in range(20)])
    short = lambda record: len(record["messages"][0]["content"]) < len("question 10")  # noqa: E731
    ds = multimodal_chat_dataset(byte_tokens, source="jsonl", data_files=str(path), filter_fn=short)
    assert len(ds) == 10 and [ds[i]["id"] for i in range(10)] == [f"r{i}" for i in range(10)]
    assert ds.indices.dtype == "int64" and ds.stats["filtered"] == 10
    with pytest.raises(IndexError):
        ds[10]


def test_stateful_dataloader_with_workers_resumes_the_map_style_dataset(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [text_record(i) for i in range(24)])
    ds = multimodal_chat_dataset(byte_tokens, source="jsonl", data_files=str(path))

    def loader():
        return StatefulDataLoader(
            ds, batch_size=4, shuffle=True, num_workers=2, generator=torch.Generator().manual_seed(0),
            collate_fn=lambda batch: [s["id"] for s in batch],
        )

    full = list(loader())
    interrupted = loader()
    iterator = iter(interrupted)
    head = [next(iterator) for _ in range(2)]
    state = interrupted.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    assert head + list(resumed) == full


def test_builders_instantiate_from_yaml_like_torchtunes(llava_dir, tmp_path):
    from omegaconf import OmegaConf
    from torchtune import config

    cfg = OmegaConf.create(
        f"""
        parquet:
          _component_: qwenvl_data.datasets.multimodal_chat_dataset
          source: parquet
          data_files: [{llava_dir / "train.parquet"}]
          cache_dir: {tmp_path / "hf_cache"}
          on_error: skip
        streaming:
          _component_: qwenvl_data.datasets.streaming_chat_dataset
          data_files: [{llava_dir / "train.jsonl"}]
          shuffle_buffer_size: 4
        synthetic:
          _component_: qwenvl_data.datasets.synthetic_vqa_dataset
          num_samples: 5
          image_size: [56, 70]
          question_types: [color, count]
        """
    )
    parquet = config.instantiate(cfg.parquet, byte_tokens)
    assert parquet[3]["id"] == "l3" and parquet[3]["tokens"][0] == 256
    assert sorted(s["id"] for s in config.instantiate(cfg.streaming, byte_tokens)) == sorted(f"l{i}" for i in range(12))
    synthetic = config.instantiate(cfg.synthetic, None)
    assert len(synthetic) == 5 and {synthetic[i]["question_type"] for i in range(5)} <= {"color", "count"}


@pytest.mark.timeout(60)
def test_path_only_image_columns_of_a_dataset_object_go_through_the_media_checks(llava_dir, tmp_path):
    """datasets would open a FIFO itself (and hang); our resolver refuses it, and confines paths to image_dir."""
    fifo = tmp_path / "stream.png"
    os.mkfifo(fifo)
    paths = [str(sorted(llava_dir.glob("img*.png"))[0]), str(fifo), str(tmp_path / "missing.png")]
    turns = [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "q"}]},
             {"role": "assistant", "content": [{"type": "text", "text": "a"}]}]  # fmt: skip
    string = datasets.Value("string")
    features = datasets.Features({"images": datasets.Sequence(datasets.Image()),
                                  "messages": [{"role": string, "content": [{"type": string, "text": string}]}]})
    table = datasets.Dataset.from_dict({"images": [[p] for p in paths], "messages": [turns] * 3}, features=features)
    transform = packaged_vocab_transform(max_pixels=56 * 56)
    ds = multimodal_chat_dataset(transform, source=table, on_error="skip")
    assert ds[0]["image_grid_thw"].tolist() == [[1, 4, 4]] and ds[1] is None and ds[2] is None
    assert ds.stats["bad_image"] == 2
    (tmp_path / "confined").mkdir()
    confined = multimodal_chat_dataset(transform, source=table, image_dir=str(tmp_path / "confined"), on_error="skip")
    assert confined[0] is None and confined.stats["unsafe_path"] == 1
