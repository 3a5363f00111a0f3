"""Packed training batches: the same loss as unpacked, no target across samples, fast attention, online packer."""

import functools
from collections import Counter

import pytest
import torch
from support.media import photo, video_frames
from torch.utils.data import DistributedSampler

from qwenvl_data._constants import IGNORE_INDEX
from qwenvl_data.collate import padded_collate_qwen2_5_vl
from qwenvl_data.models import qwen2_5_vl_tiny
from qwenvl_data.models._packed_attention import PackedRows
from qwenvl_data.packing import packed_attention_mask, packed_block_mask, packed_collate_qwen2_5_vl
from qwenvl_data.training import NextTokenCrossEntropy, packaged_vocab_transform
from qwenvl_data.training._packed_data import PackedBatches, sample_loader
from qwenvl_data.training._loss import output_loss, project_trained_rows, trained_rows
from qwenvl_data.training._model_setup import init_weights

MAX_SEQ_LEN = 160


def _conversations() -> list[dict]:
    """Real conversations: one and two images, a video file's frames, text only, two turns."""
    return [
        {"id": "img", "messages": [
            {"role": "user", "content": [{"type": "image", "image": photo(56, 84, seed=1)},
                                         {"type": "text", "text": "What is in the picture?"}]},
            {"role": "assistant", "content": "A landscape with a red sky."}]},
        {"id": "text", "messages": [
            {"role": "user", "content": "Name three primes."},
            {"role": "assistant", "content": "Two, three and five."}]},
        {"id": "video", "messages": [
            {"role": "user", "content": [{"type": "video", "video": video_frames(4, 56, 56, seed=3), "fps": 2.0},
                                         {"type": "text", "text": "What moves?"}]},
            {"role": "assistant", "content": "The clouds drift left."}]},
        {"id": "two-images", "messages": [
            {"role": "user", "content": [{"type": "image", "image": photo(56, 56, seed=4)},
                                         {"type": "image", "image": photo(84, 56, seed=5)},
                                         {"type": "text", "text": "Which one is brighter?"}]},
            {"role": "assistant", "content": "The second."},
            {"role": "user", "content": "Why?"},
            {"role": "assistant", "content": "It has more white."}]},
    ]  # fmt: skip


@functools.cache
def _transformed(train_on_input: bool) -> tuple[dict, ...]:
    transform = packaged_vocab_transform(
        max_pixels=84 * 84, video_min_pixels=56 * 56, video_max_pixels=56 * 56, train_on_input=train_on_input
    )
    return tuple(transform(conversation) for conversation in _conversations())


def _samples(train_on_input: bool) -> list[dict]:
    return list(_transformed(train_on_input))


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = qwen2_5_vl_tiny()
    init_weights(model, 0.02)
    return model.eval()


def _summed_loss(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, int]:
    rows, targets = trained_rows(batch["labels"])
    with torch.no_grad(), output_loss(model, rows, targets, NextTokenCrossEntropy()):
        loss = model(**batch)  # the recipes' path: the loss inside the forward
    return loss, targets.numel()


@pytest.mark.parametrize("train_on_input", [False, True])
def test_packed_loss_equals_the_loss_of_the_same_samples_unpacked(train_on_input):
    samples = _samples(train_on_input)
    packed = packed_collate_qwen2_5_vl(samples, MAX_SEQ_LEN)
    assert packed["tokens"].shape[0] < len(samples)  # several samples do share a row
    assert "pixel_values_videos" in packed and "pixel_values" in packed
    model = _model()
    packed_loss, packed_count = _summed_loss(model, packed)
    alone = [_summed_loss(model, padded_collate_qwen2_5_vl([sample])) for sample in samples]
    assert packed_count == sum(count for _, count in alone)
    torch.testing.assert_close(packed_loss, sum(loss for loss, _ in alone), rtol=1e-5, atol=1e-5)
    padded_loss, padded_count = _summed_loss(model, padded_collate_qwen2_5_vl(samples))
    assert padded_count == packed_count
    torch.testing.assert_close(packed_loss, padded_loss, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding_side", ["packed", "left", "right"])
def test_no_trained_target_pairs_positions_of_two_samples(padding_side):
    """With train_on_input=True every label is trained, so only the collator can keep shifts inside samples."""
    samples = _samples(train_on_input=True)
    if padding_side == "packed":
        batch = packed_collate_qwen2_5_vl(samples, MAX_SEQ_LEN)
        owner = batch["document_ids"]
    else:
        batch = padded_collate_qwen2_5_vl(samples, padding_side=padding_side)
        owner = torch.where(batch["attention_mask"], torch.arange(len(samples))[:, None], -1)
    rows, _ = trained_rows(batch["labels"])
    position, target = owner[:, :-1], owner[:, 1:]
    crossing = rows[:, :-1] & (position != target)
    assert not crossing.any()
    # Everything a sample trains on its own is still trained.
    assert rows.sum() == sum(sum(label != IGNORE_INDEX for label in s["labels"][1:]) for s in samples)


@pytest.mark.filterwarnings("ignore:.*flex_attention.*:UserWarning")  # eager (uncompiled) flex on CPU is fine here
def test_default_packed_attention_is_varlen_and_equals_the_dense_mask_and_flex():
    samples = _samples(train_on_input=False)
    batch = packed_collate_qwen2_5_vl(samples, MAX_SEQ_LEN)
    model = _model()
    assert isinstance(model._attention_mask(batch["tokens"], batch["attention_mask"], batch["document_ids"], None), PackedRows)
    real = batch["attention_mask"]
    with torch.no_grad(), project_trained_rows(model, real):  # every real position, not the vocab x padding
        fast = model(**batch)
        dense = model(**batch, mask=packed_attention_mask(batch["document_ids"]).squeeze(1))
        flex = model(**batch, mask=packed_block_mask(batch["document_ids"]))
    torch.testing.assert_close(fast, dense, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(flex, dense, rtol=1e-5, atol=1e-5)


class _Lengths(torch.utils.data.Dataset):
    """Samples of known lengths whose tokens carry their index; every 11th is skipped (None). Logs reads."""

    def __init__(self, lengths: list[int]) -> None:
        self.lengths = lengths
        self.read: list[int] = []

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> dict | None:
        self.read.append(index)
        if index % 11 == 7:
            return None
        return {"id": index, "tokens": [100 + index] * self.lengths[index], "labels": [index] * self.lengths[index]}


def _packer(dataset, rows_per_batch=2, buffer_size=8) -> PackedBatches:
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=3)
    return PackedBatches(sample_loader(dataset, sampler, 0), 64, rows_per_batch, buffer_size=buffer_size)


def _sample_ids(batch: dict) -> list[list[int]]:
    return [torch.unique_consecutive(row[real] - 100).tolist() for row, real in zip(batch["tokens"], batch["attention_mask"])]


def test_online_packer_fills_rows_across_batches_and_loses_or_repeats_no_sample():
    generator = torch.Generator().manual_seed(0)
    dataset = _Lengths(torch.randint(4, 40, (60,), generator=generator).tolist())
    packer = _packer(dataset, rows_per_batch=1)
    rows = []
    while len(dataset.read) < 2 * 60:  # two passes, each reshuffled
        rows += _sample_ids(next(packer))
    first, second = dataset.read[:60], dataset.read[60:120]
    assert first != second and sorted(first) == sorted(second) == list(range(60))
    emitted = Counter(i for row in rows for i in row)
    waiting = Counter(item.sample["id"] for item in packer._pending)
    assert emitted + waiting == Counter(i for i in dataset.read if i % 11 != 7)
    # One-row batches whose rows hold several samples: the buffer packs across batches.
    assert max(len(row) for row in rows) > 1
    assert sum(dataset.lengths[i] for row in rows for i in row) / (len(rows) * 64) > 0.9


def test_online_packer_resumes_exactly_from_its_small_state():
    dataset = _Lengths(torch.randint(4, 40, (50,), generator=torch.Generator().manual_seed(1)).tolist())
    reference = [_sample_ids(next(packer)) for packer in [_packer(dataset)] for _ in range(30)]
    for stop in (1, 9, 17):
        packer = _packer(dataset)
        for _ in range(stop):
            next(packer)
        state = packer.state_dict()
        assert not any(isinstance(value, torch.Tensor) for value in state.values())
        resumed = _packer(dataset)
        resumed.load_state_dict(state)
        assert [_sample_ids(next(resumed)) for _ in range(30 - stop)] == reference[stop:]


def test_online_packer_names_a_sample_longer_than_a_row():
    from qwenvl_data.errors import SampleTooLongError

    dataset = _Lengths([10, 70, 10])
    with pytest.raises(SampleTooLongError, match=r"sample \(1\): 70 tokens > max_seq_len=64"):
        for _ in range(3):
            next(_packer(dataset, buffer_size=4))


def test_packed_labels_ignore_only_each_samples_first_token():
    samples = _samples(train_on_input=True)
    batch = packed_collate_qwen2_5_vl(samples, MAX_SEQ_LEN)
    starts = torch.zeros_like(batch["document_ids"], dtype=torch.bool)
    starts[:, 0] = True
    starts[:, 1:] = batch["document_ids"][:, 1:] != batch["document_ids"][:, :-1]
    real = batch["attention_mask"]
    assert (batch["labels"][starts & real] == IGNORE_INDEX).all()
    assert (batch["labels"][~starts & real] == batch["tokens"][~starts & real]).sum() > 0


def test_online_packer_over_a_streaming_dataset_resumes_exactly(tmp_path):
    """The same packer on an IterableDataset: its own state (shard position, shuffle buffer) is the anchor."""
    from support.datasets_records import text_record, write_jsonl

    from qwenvl_data.datasets import streaming_chat_dataset

    corpus = write_jsonl(tmp_path / "corpus.jsonl", [text_record(i) for i in range(23)])
    transform = packaged_vocab_transform(max_seq_len=64)

    def packer():
        dataset = streaming_chat_dataset(transform, data_files=str(corpus), seed=7, shuffle_buffer_size=4)
        return PackedBatches(sample_loader(dataset, None, 0), 96, 1, buffer_size=4)

    def ids(batch):  # "answer {i}": the tokens after each sample's last "answer"
        return batch["document_ids"].max(dim=1).values.tolist(), batch["tokens"][batch["attention_mask"]].tolist()

    reference = [ids(next(p)) for p in [packer()] for _ in range(20)]  # 20 rows: across the end of a pass
    assert max(count for count, _ in reference)[0] >= 1  # rows hold two samples or more
    for stop in (3, 11):
        interrupted = packer()
        for _ in range(stop):
            next(interrupted)
        resumed = packer()
        resumed.load_state_dict(interrupted.state_dict())
        assert [ids(next(resumed)) for _ in range(20 - stop)] == reference[stop:]
