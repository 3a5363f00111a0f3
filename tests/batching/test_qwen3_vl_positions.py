"""Qwen3-VL's position ids (``PositionRule(frames_apart=True)``) against transformers 5.24's
``Qwen3VLModel.get_rope_index`` on samples of the Qwen3-VL transform: right- and left-padded batches, packed rows
(each sample's positions as alone), and the collators bound to the model's family."""

import pytest
import torch
from support.media import photo, video_frames
from support.qwen3_reference import qwen3_tokenizer_dir, rope_index
from torch import nn

from qwenvl_data.collate import Qwen2_5_VLCollator, padded_collate_qwen2_5_vl
from qwenvl_data.models import QWEN2_5_VL, QWEN3_VL
from qwenvl_data.packing import Qwen2_5_VLPackedCollator, packed_collate_qwen2_5_vl
from qwenvl_data.training._position_rule import collator_for_model
from qwenvl_data.transform import Qwen2_5_VLTransform

RULE = QWEN3_VL.position_rule


def _conversation(seed: int, media: list[dict], question: str) -> dict:
    parts = [*media, {"type": "text", "text": question}]
    return {"messages": [{"role": "user", "content": parts}, {"role": "assistant", "content": f"Answer {seed}."}]}


@pytest.fixture(scope="module")
def samples() -> list[dict]:
    transform = Qwen2_5_VLTransform(str(qwen3_tokenizer_dir() / "tokenizer.json"), family="qwen3_vl")
    clip = {"type": "video", "video": video_frames(5, 64, 48, seed=1), "fps": 2.0}
    long_clip = {"type": "video", "video": video_frames(8, 96, 64, seed=2), "fps": 1.0}
    conversations = [
        _conversation(0, [{"type": "image", "image": photo(300, 200, seed=3)}], "What?"),
        _conversation(1, [clip], "What happens?"),
        _conversation(2, [], "Only text here, a little longer than the others."),
        _conversation(3, [long_clip, {"type": "image", "image": photo(97, 513, seed=4)}, clip], "All of it?"),
    ]
    return [transform(conversation) for conversation in conversations]


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_padded_batches_equal_get_rope_index(samples, padding_side):
    batch = padded_collate_qwen2_5_vl(samples, padding_side, position_rule=RULE)
    expected, deltas = rope_index(batch["tokens"], batch.get("image_grid_thw"), batch.get("video_grid_thw"),
                                  batch["attention_mask"].long())  # fmt: skip
    assert torch.equal(batch["position_ids"], expected)
    assert torch.equal(batch["rope_deltas"], deltas)
    assert batch["video_grid_thw"].tolist()[0][0] == 3  # per video [T, h, w], as the processor returns it


def test_another_familys_rule_refuses_timestamped_videos_instead_of_misplacing_them(samples):
    with pytest.raises(ValueError, match="video 0: its 12 pad tokens are not one contiguous run"):
        padded_collate_qwen2_5_vl(samples[1:2], position_rule=QWEN2_5_VL.position_rule)


def test_packed_rows_give_each_sample_its_positions_alone(samples):
    packed = packed_collate_qwen2_5_vl(samples, max_seq_len=2048, position_rule=RULE)
    documents = packed["document_ids"]
    order = [(row, doc) for row in range(documents.shape[0]) for doc in range(int(documents[row].max()) + 1)]
    assert len(order) == len(samples)
    for index, (row, doc) in enumerate(order):
        alone = padded_collate_qwen2_5_vl([samples[index]], position_rule=RULE)["position_ids"][:, 0]
        assert torch.equal(packed["position_ids"][:, row, documents[row] == doc], alone), f"sample {index}"
    assert torch.equal(Qwen2_5_VLPackedCollator(2048, position_rule=RULE)(samples)["position_ids"],
                       packed["position_ids"])  # fmt: skip


class _Qwen3Stub(nn.Module):
    """What ``family_of_model`` reads off a Qwen3-VL model: its ``model_type``."""

    model_type = "qwen3_vl"


def test_collators_take_the_models_family_rule_and_refuse_another(samples):
    bound = collator_for_model(Qwen2_5_VLCollator(), _Qwen3Stub())
    assert bound.position_rule == RULE
    assert torch.equal(bound(samples)["position_ids"], padded_collate_qwen2_5_vl(samples, position_rule=RULE)[
        "position_ids"])  # fmt: skip
    packed = collator_for_model(Qwen2_5_VLPackedCollator(2048), _Qwen3Stub())
    assert packed.position_rule == RULE
    with pytest.raises(ValueError, match="tokens_per_second=2 but the model is Qwen3VLForConditionalGeneration"):
        collator_for_model(Qwen2_5_VLCollator(tokens_per_second=2), _Qwen3Stub())
    with pytest.raises(ValueError, match="once"):
        Qwen2_5_VLCollator(tokens_per_second=2, position_rule=RULE)


def test_a_model_of_your_own_leaves_the_collator_as_it_is():
    collator = Qwen2_5_VLCollator(tokens_per_second=2)
    assert collator_for_model(collator, nn.Linear(2, 2)) is collator
