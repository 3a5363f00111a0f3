"""The collator's batch, key by key: what each output holds, its shape and dtype, and its errors.

Samples are in the text transform's output format (``vl_sample``: real special-token layout,
real vocabulary ids, pixel rows of the real patch size). Positions are checked against
transformers 5.24's ``get_rope_index`` on the same padded batch.
"""

import pickle

import pytest
import torch
from support.vl_samples import hf_rope_index, vl_sample

from qwenvl_data._constants import IGNORE_INDEX, IMAGE_PAD_ID, PAD_ID, PATCH_DIM
from qwenvl_data.collate import Qwen2_5_VLCollator, padded_collate_qwen2_5_vl
from qwenvl_data.errors import PlaceholderMismatchError, SampleError, SampleTooLongError


@pytest.fixture
def image_batch() -> list[dict]:
    """Three samples: two images of different sizes, a text-only one, and one image."""
    return [
        vl_sample([("image", 32, 24), ("image", 8, 12)], seed=0, sample_id="a"),
        vl_sample([], question_len=5, seed=1, sample_id="b"),
        vl_sample([("image", 16, 16)], answer_len=30, seed=2, sample_id="c"),
    ]


def test_every_output_key_shape_and_dtype(image_batch):
    batch = padded_collate_qwen2_5_vl(image_batch)
    lengths = [len(s["tokens"]) for s in image_batch]
    B, L = 3, max(lengths)
    assert list(batch) == [
        "tokens",
        "labels",
        "attention_mask",
        "position_ids",
        "rope_deltas",
        "pixel_values",
        "image_grid_thw",
    ]
    assert batch["tokens"].shape == (B, L) and batch["tokens"].dtype == torch.int64
    assert batch["labels"].shape == (B, L) and batch["labels"].dtype == torch.int64
    assert batch["attention_mask"].shape == (B, L) and batch["attention_mask"].dtype == torch.bool
    assert batch["position_ids"].shape == (3, B, L) and batch["position_ids"].dtype == torch.int64
    assert batch["rope_deltas"].shape == (B, 1) and batch["rope_deltas"].dtype == torch.int64
    num_patches = 32 * 24 + 8 * 12 + 16 * 16
    assert batch["pixel_values"].shape == (num_patches, PATCH_DIM) and batch["pixel_values"].dtype == torch.float32
    assert batch["image_grid_thw"].tolist() == [[1, 32, 24], [1, 8, 12], [1, 16, 16]]
    assert batch["image_grid_thw"].dtype == torch.int64
    assert batch["attention_mask"].sum(1).tolist() == lengths


def test_right_padding_uses_endoftext_for_tokens_and_ignore_index_for_labels(image_batch):
    batch = padded_collate_qwen2_5_vl(image_batch)
    for row, sample in enumerate(image_batch):
        n = len(sample["tokens"])
        assert batch["tokens"][row, :n].tolist() == sample["tokens"]
        assert batch["labels"][row, :n].tolist() == sample["labels"]
        assert (batch["tokens"][row, n:] == PAD_ID).all()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][row].tolist() == [True] * n + [False] * (batch["tokens"].shape[1] - n)


def test_left_padding_puts_the_padding_first_for_generation(image_batch):
    right = padded_collate_qwen2_5_vl(image_batch)
    left = Qwen2_5_VLCollator(padding_side="left")(image_batch)
    for row, sample in enumerate(image_batch):
        n = len(sample["tokens"])
        assert left["tokens"][row, -n:].tolist() == sample["tokens"]
        assert (left["tokens"][row, :-n] == PAD_ID).all()
        assert not left["attention_mask"][row, :-n].any() and left["attention_mask"][row, -n:].all()
    # the same real tokens get the same positions whichever side the padding is on
    left_real = left["position_ids"][:, left["attention_mask"]]
    assert torch.equal(left_real, right["position_ids"][:, right["attention_mask"]])
    assert torch.equal(left["rope_deltas"], right["rope_deltas"])


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_position_ids_and_rope_deltas_match_transformers(image_batch, padding_side):
    batch = padded_collate_qwen2_5_vl(image_batch, padding_side=padding_side, pad_to_multiple_of=64)
    position_ids, rope_deltas = hf_rope_index(
        batch["tokens"], batch["image_grid_thw"], attention_mask=batch["attention_mask"]
    )
    assert torch.equal(batch["position_ids"], position_ids)
    assert torch.equal(batch["rope_deltas"], rope_deltas)


def test_pad_to_multiple_of_rounds_the_length_up(image_batch):
    longest = max(len(s["tokens"]) for s in image_batch)
    batch = padded_collate_qwen2_5_vl(image_batch, pad_to_multiple_of=128)
    assert batch["tokens"].shape[1] == -(-longest // 128) * 128
    assert batch["attention_mask"].sum() == sum(len(s["tokens"]) for s in image_batch)


def test_max_seq_len_pads_every_batch_to_the_same_length(image_batch):
    collate = Qwen2_5_VLCollator(max_seq_len=512)
    assert collate(image_batch)["tokens"].shape == (3, 512)
    assert collate(image_batch[1:2])["position_ids"].shape == (3, 1, 512)


def test_a_sample_longer_than_max_seq_len_is_an_error_not_truncated(image_batch):
    too_long = rf"sample 0 \(a\): {len(image_batch[0]['tokens'])} tokens > max_seq_len=100"
    with pytest.raises(SampleTooLongError, match=too_long):
        padded_collate_qwen2_5_vl(image_batch, max_seq_len=100)


def test_pixel_values_are_concatenated_in_sample_order(image_batch):
    batch = padded_collate_qwen2_5_vl(image_batch)
    expected = torch.cat([image_batch[0]["pixel_values"], image_batch[2]["pixel_values"]])
    assert torch.equal(batch["pixel_values"], expected)


def test_a_text_only_batch_has_no_vision_keys():
    batch = padded_collate_qwen2_5_vl([vl_sample(seed=3), vl_sample(question_len=40, seed=4)])
    assert set(batch) == {"tokens", "labels", "attention_mask", "position_ids", "rope_deltas"}
    lengths = batch["attention_mask"].sum(1)
    expected = torch.arange(batch["tokens"].shape[1]).expand(2, -1) * batch["attention_mask"]
    assert torch.equal(batch["position_ids"], expected.expand(3, -1, -1))
    assert batch["rope_deltas"].tolist() == [[0], [0]]
    assert lengths.tolist() == [len(vl_sample(seed=3)["tokens"]), len(vl_sample(question_len=40, seed=4)["tokens"])]


def test_video_keys_are_concatenated_and_positions_match_transformers():
    samples = [
        vl_sample([("video", 4, 12, 16, 2 / 3)], seed=5),
        vl_sample([("image", 10, 14)], seed=6),
        vl_sample([("image", 4, 4), ("video", 2, 20, 8, 1.0)], seed=7),
    ]
    batch = padded_collate_qwen2_5_vl(samples)
    assert batch["pixel_values_videos"].shape == (4 * 12 * 16 + 2 * 20 * 8, PATCH_DIM)
    assert batch["video_grid_thw"].tolist() == [[4, 12, 16], [2, 20, 8]]
    assert batch["second_per_grid_ts"].dtype == torch.float32
    assert batch["second_per_grid_ts"].tolist() == pytest.approx([2 / 3, 1.0])
    assert batch["image_grid_thw"].tolist() == [[1, 10, 14], [1, 4, 4]]
    reference = hf_rope_index(
        batch["tokens"],
        batch["image_grid_thw"],
        batch["video_grid_thw"],
        batch["second_per_grid_ts"],
        batch["attention_mask"],
    )
    assert torch.equal(batch["position_ids"], reference[0])
    assert torch.equal(batch["rope_deltas"], reference[1])


def test_tokens_and_labels_may_be_tensors(image_batch):
    as_tensors = [
        {**s, "tokens": torch.tensor(s["tokens"]), "labels": torch.tensor(s["labels"])} for s in image_batch
    ]
    expected = padded_collate_qwen2_5_vl(image_batch)
    batch = padded_collate_qwen2_5_vl(as_tensors)
    assert all(torch.equal(batch[key], expected[key]) for key in expected)


def test_samples_without_labels_give_a_batch_without_labels(image_batch):
    prompts = [{k: v for k, v in s.items() if k != "labels"} for s in image_batch]
    batch = padded_collate_qwen2_5_vl(prompts, padding_side="left")
    assert "labels" not in batch and batch["tokens"].shape[0] == 3


def test_none_samples_are_dropped(image_batch):
    batch = padded_collate_qwen2_5_vl([None, image_batch[0], None, image_batch[2]])
    assert batch["tokens"].shape[0] == 2
    assert batch["image_grid_thw"].shape == (3, 3)


def test_a_batch_of_only_none_is_an_error():
    with pytest.raises(ValueError, match="empty batch: all 2 samples are None"):
        padded_collate_qwen2_5_vl([None, None])


def test_pad_token_count_disagreeing_with_the_grid_names_the_sample(image_batch):
    image_batch[2]["image_grid_thw"] = torch.tensor([[1, 16, 20]])
    with pytest.raises(PlaceholderMismatchError, match=r"sample 3 \(c\): 64 image pad tokens but .* needs 80"):
        padded_collate_qwen2_5_vl([image_batch[0], None, image_batch[1], image_batch[2]])


def test_image_pad_tokens_without_images_name_the_sample(image_batch):
    text_only = image_batch[1]
    text_only["tokens"] = text_only["tokens"][:3] + [IMAGE_PAD_ID] + text_only["tokens"][4:]
    with pytest.raises(PlaceholderMismatchError, match=r"sample 1 \(b\): 1 image pad tokens but no image_grid_thw"):
        padded_collate_qwen2_5_vl(image_batch)


def test_pixel_values_without_their_grid_name_the_sample(image_batch):
    del image_batch[2]["image_grid_thw"]
    with pytest.raises(SampleError, match=r"sample 2 \(c\): has pixel_values but no image_grid_thw"):
        padded_collate_qwen2_5_vl(image_batch)


def test_pixel_rows_disagreeing_with_the_grid_name_the_sample(image_batch):
    image_batch[0]["pixel_values"] = image_batch[0]["pixel_values"][:-4]
    with pytest.raises(SampleError, match=r"sample 0 \(a\): pixel_values has shape \(860, 1176\) but .* needs 864"):
        padded_collate_qwen2_5_vl(image_batch)


def test_a_sample_missing_labels_that_others_have_is_named(image_batch):
    del image_batch[1]["labels"]
    with pytest.raises(SampleError, match=r"sample 1 \(b\): no 'labels' while other samples"):
        padded_collate_qwen2_5_vl(image_batch)


def test_labels_of_another_length_name_the_sample(image_batch):
    image_batch[0]["labels"] = image_batch[0]["labels"][:-1]
    with pytest.raises(SampleError, match=r"sample 0 \(a\): \d+ labels for \d+ tokens"):
        padded_collate_qwen2_5_vl(image_batch)


def test_bad_options_are_rejected_when_the_collator_is_built():
    with pytest.raises(ValueError, match="padding_side"):
        Qwen2_5_VLCollator(padding_side="middle")
    with pytest.raises(ValueError, match="not a multiple"):
        Qwen2_5_VLCollator(pad_to_multiple_of=64, max_seq_len=100)


def test_collator_is_a_picklable_dataloader_collate_fn(image_batch):
    """It pickles (DataLoader workers get a copy of it) and gives the same batch as the function."""
    collate = pickle.loads(pickle.dumps(Qwen2_5_VLCollator(pad_to_multiple_of=8)))
    loader = torch.utils.data.DataLoader(image_batch, batch_size=3, collate_fn=collate)
    (batch,) = list(loader)
    expected = padded_collate_qwen2_5_vl(image_batch, pad_to_multiple_of=8)
    assert all(torch.equal(batch[key], expected[key]) for key in expected)


def test_real_transform_output_collates_and_matches_transformers(vocab_files):
    """End to end: Qwen2_5_VLTransform on generated photos and a clip, then the collator."""
    from support.media import photo, video_frames

    from qwenvl_data.transform import Qwen2_5_VLTransform

    transform = Qwen2_5_VLTransform(*vocab_files)
    conversations = [
        [
            {"role": "user", "content": [
                {"type": "image", "image": photo(320, 240, seed=1)},
                {"type": "image", "image": photo(100, 500, seed=2)},
                {"type": "text", "text": "What differs between the two pictures?"},
            ]},
            {"role": "assistant", "content": "The second one is tall and narrow."},
        ],
        [
            {"role": "user", "content": "Say hello."},
            {"role": "assistant", "content": "Hello!"},
        ],
        [
            {"role": "user", "content": [
                {"type": "video", "video": video_frames(4, 224, 224, seed=3), "fps": 2.0},
                {"type": "text", "text": "What happens in this clip?"},
            ]},
            {"role": "assistant", "content": "Shapes move around."},
        ],
    ]
    samples = [transform({"messages": messages, "id": f"conv{i}"}) for i, messages in enumerate(conversations)]
    batch = padded_collate_qwen2_5_vl(samples, padding_side="left")
    for row, sample in enumerate(samples):
        assert batch["tokens"][row, -len(sample["tokens"]):].tolist() == sample["tokens"]
        assert batch["labels"][row, -len(sample["labels"]):].tolist() == sample["labels"]
    assert torch.equal(batch["pixel_values"], samples[0]["pixel_values"])
    assert torch.equal(batch["image_grid_thw"], samples[0]["image_grid_thw"])
    assert torch.equal(batch["pixel_values_videos"], samples[2]["pixel_values_videos"])
    assert torch.equal(batch["second_per_grid_ts"], samples[2]["second_per_grid_ts"])
    reference = hf_rope_index(
        batch["tokens"],
        batch["image_grid_thw"],
        batch["video_grid_thw"],
        batch["second_per_grid_ts"],
        batch["attention_mask"],
    )
    assert torch.equal(batch["position_ids"], reference[0])
    assert torch.equal(batch["rope_deltas"], reference[1])


def test_nested_token_lists_name_the_sample(image_batch):
    image_batch[1]["tokens"] = [image_batch[1]["tokens"]]
    with pytest.raises(SampleError, match=r"sample 1 \(b\): tokens must be a flat list of ints"):
        padded_collate_qwen2_5_vl(image_batch)


# ---- a collator left unset takes the video rule of the family whose transform made the samples ----------------
def _video_chat(transform, seed: int) -> dict:
    from support.media import video_frames
    from torchtune.data import Message

    frames = video_frames(4, 64, 64, seed=seed)
    messages = [Message("user", [{"type": "video", "content": frames}, {"type": "text", "content": "What moves?"}]),
                Message("assistant", "A cat.")]  # fmt: skip
    return transform({"messages": messages})


SMALL_VIDEO = dict(video_min_pixels=56 * 56, video_max_pixels=64 * 64 * 4)


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_an_unset_collator_applies_the_samples_familys_video_positions(model_type):
    from qwenvl_data.models import model_family
    from qwenvl_data.transform import Qwen2_5_VLTransform
    from qwenvl_data.vocab import qwen_vocab_files

    transform = Qwen2_5_VLTransform(*qwen_vocab_files(), family=model_type, **SMALL_VIDEO)
    samples = [_video_chat(transform, seed) for seed in (1, 2)]
    assert all(sample["family"] == model_type for sample in samples)
    given = Qwen2_5_VLCollator(position_rule=model_family(model_type).position_rule)(samples)
    assert torch.equal(Qwen2_5_VLCollator()(samples)["position_ids"], given["position_ids"])
    assert torch.equal(padded_collate_qwen2_5_vl(samples)["position_ids"], given["position_ids"])


def test_an_unset_collator_no_longer_gives_qwen2_vl_videos_qwen2_5_vls_temporal_ids():
    from qwenvl_data.models import QWEN2_5_VL
    from qwenvl_data.transform import Qwen2_5_VLTransform
    from qwenvl_data.vocab import qwen_vocab_files

    samples = [_video_chat(Qwen2_5_VLTransform(*qwen_vocab_files(), family="qwen2_vl", **SMALL_VIDEO), 1)]
    seconds_rule = Qwen2_5_VLCollator(position_rule=QWEN2_5_VL.position_rule)(samples)["position_ids"]
    assert not torch.equal(Qwen2_5_VLCollator()(samples)["position_ids"], seconds_rule)


def test_samples_of_families_with_other_video_rules_are_not_collated_together():
    from qwenvl_data.transform import Qwen2_5_VLTransform
    from qwenvl_data.vocab import qwen_vocab_files

    qwen2 = Qwen2_5_VLTransform(*qwen_vocab_files(), family="qwen2_vl", **SMALL_VIDEO)
    qwen2_5 = Qwen2_5_VLTransform(*qwen_vocab_files(), family="qwen2_5_vl", **SMALL_VIDEO)
    with pytest.raises(ValueError, match=r"families \['qwen2_5_vl', 'qwen2_vl'\], whose video positions differ"):
        Qwen2_5_VLCollator()([_video_chat(qwen2, 1), _video_chat(qwen2_5, 2)])
