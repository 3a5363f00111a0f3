"""Packed batches: whole samples per row, each with the positions and labels it has on its own."""

import pytest
import torch
import torch.nn.functional as F
from support.vl_samples import hf_rope_index, vl_sample

from qwenvl_data._constants import IGNORE_INDEX, PAD_ID
from qwenvl_data.collate import padded_collate_qwen2_5_vl
from qwenvl_data.errors import SampleTooLongError
from qwenvl_data.packing import (
    Qwen2_5_VLPackedCollator,
    first_fit_rows,
    packed_attention_mask,
    packed_block_mask,
    packed_collate_qwen2_5_vl,
)

MAX_SEQ_LEN = 384


@pytest.fixture
def samples() -> list[dict]:
    """Six samples of 49..239 tokens: images, a clip whose temporal ids outgrow its grid, text only."""
    return [
        vl_sample([("image", 20, 24)], seed=0, sample_id="a"),  # 120 image tokens
        vl_sample([("video", 12, 8, 8, 1.0)], seed=1, sample_id="b"),  # 12 x 4 x 4 tokens, temporal ids 0..22
        vl_sample([], question_len=20, seed=2, sample_id="c"),
        vl_sample([("image", 8, 8), ("image", 12, 6)], seed=3, sample_id="d"),
        vl_sample([], answer_len=60, seed=4, sample_id="e"),
        vl_sample([("image", 28, 28)], seed=5, sample_id="f"),  # 196 image tokens
    ]


def test_first_fit_puts_each_sample_in_the_first_row_with_room():
    assert first_fit_rows([5, 4, 3, 2], 7) == [[0, 3], [1, 2]]
    assert first_fit_rows([7, 7], 7) == [[0], [1]]
    assert first_fit_rows([1, 6, 2, 1], 7) == [[0, 1], [2, 3]]


def test_packed_batch_keys_shapes_and_dtypes(samples):
    batch = Qwen2_5_VLPackedCollator(MAX_SEQ_LEN)(samples)
    lengths = [len(s["tokens"]) for s in samples]
    rows = first_fit_rows(lengths, MAX_SEQ_LEN)
    B = len(rows)
    assert B < len(samples)  # packing saved rows
    assert batch["tokens"].shape == batch["labels"].shape == (B, MAX_SEQ_LEN)
    assert batch["attention_mask"].dtype == torch.bool
    assert batch["position_ids"].shape == (3, B, MAX_SEQ_LEN)
    assert batch["document_ids"].shape == (B, MAX_SEQ_LEN) and batch["document_ids"].dtype == torch.int64
    widest = max(map(len, rows))
    assert batch["seq_lens"].shape == (B, widest) and batch["seq_lens"].dtype == torch.int64
    assert batch["seq_lens"].tolist() == [[lengths[i] for i in row] + [0] * (widest - len(row)) for row in rows]
    assert torch.equal(batch["attention_mask"], batch["document_ids"] >= 0)
    assert batch["attention_mask"].sum() == sum(lengths)
    assert (batch["tokens"][~batch["attention_mask"]] == PAD_ID).all()
    assert (batch["labels"][~batch["attention_mask"]] == IGNORE_INDEX).all()


def test_each_packed_sample_keeps_its_tokens_labels_and_positions(samples):
    """Cut every sample back out of its row: same tokens, labels and MRoPE ids as unpacked."""
    packed = packed_collate_qwen2_5_vl(samples, MAX_SEQ_LEN)
    unpacked = padded_collate_qwen2_5_vl(samples)
    reference_positions = hf_rope_index(
        unpacked["tokens"],
        unpacked["image_grid_thw"],
        unpacked["video_grid_thw"],
        unpacked["second_per_grid_ts"],
        unpacked["attention_mask"],
    )[0]
    rows = first_fit_rows([len(s["tokens"]) for s in samples], MAX_SEQ_LEN)
    for row, members in enumerate(rows):
        for doc, index in enumerate(members):
            cols = packed["document_ids"][row] == doc
            n = len(samples[index]["tokens"])
            assert packed["tokens"][row, cols].tolist() == samples[index]["tokens"]
            assert packed["labels"][row, cols].tolist() == samples[index]["labels"]
            assert torch.equal(packed["position_ids"][:, row, cols], unpacked["position_ids"][:, index, :n])
            if index != 1:  # sample b's long clip is where transformers 5.x leaves the training rule
                assert torch.equal(packed["position_ids"][:, row, cols], reference_positions[:, index, :n])
            assert packed["position_ids"][:, row, cols][:, 0].tolist() == [0, 0, 0]  # restart per sample
        assert packed["rope_deltas"][row, 0] == sum(unpacked["rope_deltas"][i, 0] for i in members)


def test_vision_inputs_follow_the_packed_order(samples):
    """First fit may move a later sample into an earlier row; pixels follow the tokens' order."""
    rows = first_fit_rows([len(s["tokens"]) for s in samples], MAX_SEQ_LEN)
    order = [i for row in rows for i in row]
    assert order != sorted(order)  # this batch does get reordered
    batch = packed_collate_qwen2_5_vl(samples, MAX_SEQ_LEN)
    with_images = [samples[i] for i in order if "pixel_values" in samples[i]]
    assert torch.equal(batch["image_grid_thw"], torch.cat([s["image_grid_thw"] for s in with_images]))
    assert torch.equal(batch["pixel_values"], torch.cat([s["pixel_values"] for s in with_images]))
    assert torch.equal(batch["video_grid_thw"], samples[1]["video_grid_thw"])


def test_a_sample_longer_than_a_row_is_an_error(samples):
    with pytest.raises(SampleTooLongError, match=r"sample 1 \(b\): \d+ tokens > max_seq_len=200"):
        packed_collate_qwen2_5_vl(samples, 200)


def test_attention_mask_is_block_causal_and_padding_sees_itself():
    mask = packed_attention_mask(torch.tensor([[0, 0, 0, 1, 1, -1]]))
    assert mask.shape == (1, 1, 6, 6) and mask.dtype == torch.bool
    assert mask[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ]


def test_sdpa_on_a_packed_row_equals_attention_on_each_sample_alone(samples):
    batch = packed_collate_qwen2_5_vl(samples, MAX_SEQ_LEN)
    generator = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, batch["tokens"].shape[0], 2, MAX_SEQ_LEN, 16, generator=generator)
    packed = F.scaled_dot_product_attention(q, k, v, attn_mask=packed_attention_mask(batch["document_ids"]))
    assert not packed.isnan().any()
    for row in range(batch["tokens"].shape[0]):
        for doc in range(int(batch["document_ids"][row].max()) + 1):
            cols = batch["document_ids"][row] == doc
            alone = F.scaled_dot_product_attention(
                q[row][:, cols], k[row][:, cols], v[row][:, cols], is_causal=True
            )
            torch.testing.assert_close(packed[row][:, cols], alone)


@pytest.mark.filterwarnings("ignore:.*flex_attention.*:UserWarning")  # eager (uncompiled) flex on CPU is fine here
def test_flex_attention_with_the_block_mask_equals_sdpa_with_the_dense_mask(samples):
    from torch.nn.attention.flex_attention import flex_attention

    document_ids = packed_collate_qwen2_5_vl(samples, MAX_SEQ_LEN)["document_ids"]
    generator = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(3, document_ids.shape[0], 2, MAX_SEQ_LEN, 16, generator=generator)
    flex = flex_attention(q, k, v, block_mask=packed_block_mask(document_ids))
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=packed_attention_mask(document_ids))
    torch.testing.assert_close(flex, dense)


def test_both_collators_are_yaml_components(samples):
    """``collate_fn`` in a config names either collator; torchtune's instantiate builds it."""
    from omegaconf import OmegaConf
    from torchtune import config

    cfg = OmegaConf.create(
        """
        padded: {_component_: qwenvl_data.collate.Qwen2_5_VLCollator, pad_to_multiple_of: 64}
        packed: {_component_: qwenvl_data.packing.Qwen2_5_VLPackedCollator, max_seq_len: 512}
        """
    )
    padded = config.instantiate(cfg.padded)(samples)
    packed = config.instantiate(cfg.packed)(samples)
    assert padded["tokens"].shape[1] % 64 == 0 and "document_ids" not in padded
    assert packed["tokens"].shape[1] == 512 and packed["document_ids"].shape == packed["tokens"].shape
