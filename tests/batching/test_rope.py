"""MRoPE position ids: the rule the released Qwen2.5-VL was trained with, checked against transformers.

transformers 5.24 ``Qwen2_5_VLModel.get_rope_index`` is the reference for text, images and short
videos; for videos whose temporal ids outgrow their spatial ones it restarts the text too early,
so there the slow token-by-token rule of design.md (``rule_position_ids``) is the reference.
"""

import pytest
import torch
from support.vl_samples import hf_rope_index, rule_position_ids, vl_sample

from qwenvl_data._constants import IMAGE_PAD_ID, PAD_ID, VIDEO_PAD_ID, VISION_END_ID, VISION_START_ID
from qwenvl_data.rope import mrope_position_ids


def _padded(samples: list[dict], padding_side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens int64 [B, L] padded with PAD_ID, and the bool attention mask (test-side padding)."""
    length = max(len(s["tokens"]) for s in samples)
    tokens = torch.full((len(samples), length), PAD_ID)
    mask = torch.zeros(len(samples), length, dtype=torch.bool)
    for row, sample in enumerate(samples):
        n = len(sample["tokens"])
        cols = slice(0, n) if padding_side == "right" else slice(length - n, length)
        tokens[row, cols] = torch.tensor(sample["tokens"])
        mask[row, cols] = True
    return tokens, mask


def _cat(samples: list[dict], key: str) -> torch.Tensor | None:
    parts = [s[key] for s in samples if key in s]
    return torch.cat(parts) if parts else None


def _media(samples: list[dict]) -> dict:
    return {k: _cat(samples, k) for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")}


def test_single_image_positions_by_hand():
    """Text counts up; a 2x2 merged image at s=1 spans rows/cols 1..2; the next text starts at 3."""
    ids = torch.tensor([[VISION_START_ID] + [IMAGE_PAD_ID] * 4 + [VISION_END_ID, 9]])
    position_ids, rope_deltas = mrope_position_ids(ids, image_grid_thw=torch.tensor([[1, 4, 4]]))
    assert position_ids.dtype == torch.int64 and position_ids.shape == (3, 1, 7)
    assert position_ids[:, 0].tolist() == [
        [0, 1, 1, 1, 1, 3, 4],  # temporal: an image has one frame, all at s
        [0, 1, 1, 2, 2, 3, 4],  # height: s + row
        [0, 1, 2, 1, 2, 3, 4],  # width: s + col
    ]
    assert rope_deltas.dtype == torch.int64 and rope_deltas.tolist() == [[4 + 1 - 7]]


def test_text_only_rows_count_up_from_zero():
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, PAD_ID, PAD_ID]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    position_ids, rope_deltas = mrope_position_ids(ids, attention_mask=mask)
    expected = torch.tensor([[0, 1, 2, 3], [0, 1, 0, 0]]).expand(3, -1, -1)
    assert torch.equal(position_ids, expected)
    assert rope_deltas.tolist() == [[0], [0]]


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_images_of_different_sizes_match_transformers(padding_side):
    samples = [
        vl_sample([("image", 32, 32), ("image", 8, 44), ("image", 60, 6)], seed=1),
        vl_sample([], question_len=30, seed=2),  # text-only row in an image batch
        vl_sample([("image", 2, 2)], question_len=3, seed=3),  # smallest image: one token
        vl_sample([("image", 14, 20), ("image", 20, 14)], answer_len=40, seed=4),
    ]
    tokens, mask = _padded(samples, padding_side)
    media = _media(samples)
    ours = mrope_position_ids(tokens, media["image_grid_thw"], attention_mask=mask)
    reference = hf_rope_index(tokens, media["image_grid_thw"], attention_mask=mask)
    assert torch.equal(ours[0], reference[0])  # padding positions included (0, as in 5.x)
    assert torch.equal(ours[1], reference[1])


def test_left_padding_shifts_positions_without_changing_them():
    samples = [vl_sample([("image", 16, 12)], seed=5), vl_sample([("image", 4, 4)], answer_len=50, seed=6)]
    right_tokens, right_mask = _padded(samples, "right")
    left_tokens, left_mask = _padded(samples, "left")
    grids = _media(samples)["image_grid_thw"]
    right, right_deltas = mrope_position_ids(right_tokens, grids, attention_mask=right_mask)
    left, left_deltas = mrope_position_ids(left_tokens, grids, attention_mask=left_mask.long())
    assert torch.equal(right[:, right_mask], left[:, left_mask])
    assert torch.equal(right_deltas, left_deltas)


def test_short_videos_with_fractional_intervals_match_transformers():
    """Videos at 3 fps (2/3 s per temporal patch) and 2 fps next to an image; text after each."""
    samples = [
        vl_sample([("video", 4, 16, 20, 2 / 3), ("image", 10, 8)], seed=7),
        vl_sample([("image", 6, 6), ("video", 3, 12, 12, 1.0)], seed=8),
        vl_sample([], seed=9),
    ]
    tokens, mask = _padded(samples, "right")
    media = _media(samples)
    # temporal ids floor(k * 2/3 * 2) = 0, 1, 2, 4 stay below the spatial extent, where 5.x agrees.
    ours = mrope_position_ids(tokens, attention_mask=mask, **media)
    reference = hf_rope_index(tokens, attention_mask=mask, **media)
    assert torch.equal(ours[0], reference[0])
    assert torch.equal(ours[1], reference[1])
    video_start = samples[0]["tokens"].index(VIDEO_PAD_ID)
    assert ours[0][0, 0, video_start :: 8 * 10].tolist()[:4] == [video_start + k for k in (0, 1, 2, 4)]


def _rule_grids(media: list[tuple]) -> tuple[list[list[int]], list[float]]:
    """vl_sample media items as ``rule_position_ids`` arguments: grids and seconds in order."""
    grids = [[1, *item[1:]] if item[0] == "image" else list(item[1:4]) for item in media]
    seconds = [0.0 if item[0] == "image" else float(torch.tensor(item[4], dtype=torch.float32)) for item in media]
    return grids, seconds


def test_long_video_follows_the_training_rule_not_transformers_5():
    """A 40-step clip on a 4x4 token grid: temporal ids reach s+78, so the text resumes at s+79."""
    media = [
        [("video", 40, 8, 8, 1.0), ("image", 4, 6)],
        [("video", 9, 4, 6, 0.5), ("image", 2, 4), ("video", 20, 6, 4, 2 / 3)],
    ]
    samples = [vl_sample(items, seed=10 + row) for row, items in enumerate(media)]
    tokens, mask = _padded(samples, "left")
    ours, deltas = mrope_position_ids(tokens, attention_mask=mask, **_media(samples))
    for row, sample in enumerate(samples):
        expected = rule_position_ids(sample["tokens"], *_rule_grids(media[row]))
        assert ours[:, row, mask[row]].tolist() == expected
        assert deltas[row, 0] == max(map(max, expected)) + 1 - len(sample["tokens"])

    video_start = samples[0]["tokens"].index(VIDEO_PAD_ID)
    video_end_col = int((~mask[0]).sum()) + samples[0]["tokens"].index(VISION_END_ID)
    assert ours[0, 0, video_end_col] == video_start + 39 * 2 + 1
    reference = hf_rope_index(tokens, attention_mask=mask, **_media(samples))[0]
    assert reference[0, 0, video_end_col] == video_start + 4  # 5.x: s + max(h, w) / 2


def test_pad_tokens_disagreeing_with_grids_is_an_error():
    ids = torch.tensor([[VISION_START_ID] + [IMAGE_PAD_ID] * 5 + [VISION_END_ID]])
    with pytest.raises(ValueError, match=r"5 image pad tokens but image_grid_thw \[\[1, 4, 4\]\] needs 4"):
        mrope_position_ids(ids, image_grid_thw=torch.tensor([[1, 4, 4]]))
    with pytest.raises(ValueError, match="0 video pad tokens"):
        mrope_position_ids(ids[:, :1], video_grid_thw=torch.tensor([[2, 4, 4]]))


def test_a_span_split_by_text_or_across_rows_is_an_error():
    split = torch.tensor([[IMAGE_PAD_ID, IMAGE_PAD_ID, 7, IMAGE_PAD_ID, IMAGE_PAD_ID]])
    with pytest.raises(ValueError, match="image 0: its 4 pad tokens are not one contiguous run in one row"):
        mrope_position_ids(split, image_grid_thw=torch.tensor([[1, 4, 4]]))
    across_rows = torch.tensor([[7, 7, IMAGE_PAD_ID, IMAGE_PAD_ID], [IMAGE_PAD_ID, IMAGE_PAD_ID, 7, 7]])
    with pytest.raises(ValueError, match="not one contiguous run in one row"):
        mrope_position_ids(across_rows, image_grid_thw=torch.tensor([[1, 4, 4]]))


def test_grid_sides_must_be_multiples_of_the_merge_size():
    ids = torch.tensor([[IMAGE_PAD_ID] * 3])
    with pytest.raises(ValueError, match=r"image_grid_thw\[0\] = \[1, 3, 4\]"):
        mrope_position_ids(ids, image_grid_thw=torch.tensor([[1, 3, 4]]))


def test_two_images_whose_spans_touch_are_still_two_spans():
    """Pad tokens are assigned to grids by count, so no separator is needed between two images."""
    tokens = [5] + [IMAGE_PAD_ID] * (4 + 1) + [6]
    grids = [[1, 4, 4], [1, 2, 2]]
    position_ids, _ = mrope_position_ids(torch.tensor([tokens]), image_grid_thw=torch.tensor(grids))
    assert position_ids[:, 0].tolist() == rule_position_ids(tokens, grids, [0.0, 0.0])
    assert position_ids[:, 0, 5].tolist() == [3, 3, 3]  # the second image starts after the first's 2x2 grid


def test_errors_name_the_video_by_its_index_among_videos():
    ids = torch.tensor([[IMAGE_PAD_ID] * 4 + [7] + [VIDEO_PAD_ID] * 4 + [7] + [VIDEO_PAD_ID] * 2 + [7, VIDEO_PAD_ID] * 2])
    grids = {"image_grid_thw": torch.tensor([[1, 4, 4]]), "video_grid_thw": torch.tensor([[1, 4, 4], [1, 4, 4]])}
    with pytest.raises(ValueError, match="video 1: its 4 pad tokens are not one contiguous run"):
        mrope_position_ids(ids, **grids)
    with pytest.raises(ValueError, match=r"video_grid_thw\[1\] = \[2, 4, 0\]"):
        mrope_position_ids(ids, grids["image_grid_thw"], torch.tensor([[1, 4, 4], [2, 4, 0]]))
