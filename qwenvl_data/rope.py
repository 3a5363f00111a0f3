"""MRoPE position ids for Qwen2.5-VL and Qwen2-VL batches, computed with whole-batch tensor ops.

The rule is the one the released checkpoints were trained with (Qwen's training code, vLLM,
transformers 4.x): text positions count up by one; a vision span starting at position ``s``
gets temporal ids ``s + floor(t * second_per_grid_ts * tokens_per_second)`` (images: ``s``),
height ids ``s + row`` and width ids ``s + col`` on the merged grid; the text after a span
starts at (largest id used so far) + 1. Qwen2-VL's temporal ids are not scaled by time:
temporal patch ``t`` gets ``s + t`` (``tokens_per_second=None``). transformers 5.x restarts the text at
``s + max(rows, cols)`` instead, which differs for videos whose temporal ids outgrow their
spatial ones. Qwen3-VL (``frames_apart``, transformers' ``Qwen3VLModel.get_rope_index``) writes a
timestamp before each temporal patch of a video, so each patch is a span of its own with one temporal
id (a grid ``[1, h, w]``) and the timestamp's tokens are text between them.

Instead of walking the tokens, every valid token gets an "advance": 1 for text, 0 for vision
tokens except the first token of each vision item, which carries the item's whole extent
(largest offset + 1). The exclusive cumulative sum of the advances is then the start position
of every text token and every vision span at once.
"""

from dataclasses import dataclass

import torch

from qwenvl_data._constants import IMAGE_PAD_ID, MERGE_SIZE, TOKENS_PER_SECOND, VIDEO_PAD_ID

__all__ = ["PositionRule", "mrope_position_ids"]


@dataclass(frozen=True)
class PositionRule:
    """How a model family's MRoPE ids treat video (``ModelFamily.position_rule``); images are alike in all.

    Attributes:
        tokens_per_second: temporal ids per second of video (``second_per_grid_ts * tokens_per_second`` per
            temporal patch; Qwen2.5-VL: 2), or None for one id per temporal patch (Qwen2-VL).
        frames_apart: each temporal patch of a video is its own span with grid ``[1, h, w]`` (Qwen3-VL, whose
            text puts a timestamp between them); ``tokens_per_second`` is then unused.
    """

    tokens_per_second: int | None = TOKENS_PER_SECOND
    frames_apart: bool = False

    def __str__(self) -> str:
        if self.frames_apart:
            return "frames_apart=True (each temporal patch its own span)"
        return f"tokens_per_second={self.tokens_per_second}"


@dataclass
class _VisionItems:
    """Where the tokens of every image and video sit in the flattened batch (images first, then videos)."""

    token_index: torch.Tensor  # int64 [n_tokens]: flat index (row * L + col) of each vision token
    item_of_token: torch.Tensor  # int64 [n_tokens]: which item each token belongs to
    first_index: torch.Tensor  # int64 [n_items]: flat index of each item's first token
    extent: torch.Tensor  # int64 [n_items]: largest offset + 1, the positions the span uses up
    layout: torch.Tensor  # int64 [n_items, 3]: first token's rank among the tokens, rows*cols, cols
    time_interval: torch.Tensor  # float [n_items]: temporal-id step per frame (0 for images)

    def positions(self, span_start: torch.Tensor) -> torch.Tensor:
        """int64 [3, n_tokens] (temporal, height, width) ids, given each item's start position [n_items]."""
        per_token = torch.cat([self.layout, span_start[:, None]], 1).index_select(0, self.item_of_token)
        first_rank, plane, cols, start = per_token.unbind(1)
        local = torch.arange(self.token_index.numel(), device=self.token_index.device) - first_rank
        frame = local // plane
        in_frame = local - frame * plane
        row = in_frame // cols
        col = in_frame - row * cols
        # float multiply then truncation, in the interval's dtype, exactly as the reference does.
        interval = self.time_interval.index_select(0, self.item_of_token)
        temporal = start + (frame.to(interval.dtype) * interval).long()
        return torch.stack([temporal, start + row, start + col])


def _as_grid(grid_thw: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    if grid_thw is None:
        return torch.zeros(0, 3, dtype=torch.long, device=device)
    return grid_thw.to(device=device, dtype=torch.long).reshape(-1, 3)


def _locate_items(
    is_image: torch.Tensor,
    is_video: torch.Tensor,
    image_grid_thw: torch.Tensor | None,
    video_grid_thw: torch.Tensor | None,
    video_interval: torch.Tensor,
    seq_len: int,
    spatial_merge_size: int,
) -> _VisionItems | None:
    """Assign image (video) pad tokens, in batch order, to the grids of ``image_grid_thw`` (``video_grid_thw``).

    Tokens are assigned by count, not by runs of equal tokens, so two spans that touch are
    still told apart; a span that is not one contiguous run inside one row is an error.

    Args:
        is_image, is_video: bool [B * L], True on (non-padding) image / video pad tokens.
        image_grid_thw, video_grid_thw: int [n, 3] (t, h, w) in patches before merging, or None.
        video_interval: float [num_videos], temporal-id step per temporal patch.
        seq_len: L, to tell rows apart in flat indices.
        spatial_merge_size: patches merged per side into one token.

    Returns:
        The items, or None when there are neither grids nor pad tokens.
    """
    device = is_image.device
    image_grid, video_grid = _as_grid(image_grid_thw, device), _as_grid(video_grid_thw, device)
    grid = torch.cat([image_grid, video_grid])
    num_images = image_grid.shape[0]

    def item_key(k: int) -> tuple[str, int]:
        """("image" | "video", index within that modality) of item ``k``, for error messages."""
        return ("image", k) if k < num_images else ("video", k - num_images)

    t, h, w = grid.unbind(1)
    bad = (grid < 1).any(1) | (h % spatial_merge_size != 0) | (w % spatial_merge_size != 0)
    if bad.any():
        k = int(bad.nonzero()[0])
        what, index = item_key(k)
        raise ValueError(
            f"{what}_grid_thw[{index}] = {grid[k].tolist()}: t, h, w must be >= 1 and h, w multiples "
            f"of spatial_merge_size={spatial_merge_size}"
        )
    rows, cols = h // spatial_merge_size, w // spatial_merge_size
    plane = rows * cols
    counts = t * plane
    index_parts = []
    for what, is_pad, item_counts, own_grid in (
        ("image", is_image, counts[:num_images], image_grid),
        ("video", is_video, counts[num_images:], video_grid),
    ):
        index_parts.append(is_pad.nonzero().squeeze(1))
        needed = int(item_counts.sum())
        if index_parts[-1].numel() != needed:
            raise ValueError(
                f"the batch has {index_parts[-1].numel()} {what} pad tokens but {what}_grid_thw "
                f"{own_grid.tolist()} needs {needed} (t*h*w/{spatial_merge_size**2} each)"
            )
    if grid.shape[0] == 0:
        return None
    token_index = torch.cat(index_parts)
    ends = counts.cumsum(0)
    starts = ends - counts
    first_index = token_index[starts]
    last_index = token_index[ends - 1]
    broken = (last_index - first_index != counts - 1) | (first_index // seq_len != last_index // seq_len)
    if broken.any():
        k = int(broken.nonzero()[0])
        what, index = item_key(k)
        raise ValueError(f"{what} {index}: its {int(counts[k])} pad tokens are not one contiguous run in one row")

    # Item of each token: a 1 where every item after the first begins, summed up.
    item_of_token = torch.zeros(token_index.numel(), dtype=torch.long, device=device)
    item_of_token[starts[1:]] = 1
    item_of_token = item_of_token.cumsum(0)
    time_interval = torch.cat([torch.zeros(num_images, dtype=video_interval.dtype, device=device), video_interval])
    last_temporal = ((t - 1).to(time_interval.dtype) * time_interval).long()  # 0 for images: their ids stay at s
    extent = torch.maximum(last_temporal + 1, torch.maximum(rows, cols))
    layout = torch.stack([starts, plane, cols], 1)
    return _VisionItems(token_index, item_of_token, first_index, extent, layout, time_interval)


class _ModelRule:
    """The collators' position-rule default: the model's family decides (see ``collator_for_model``)."""

    def __repr__(self) -> str:
        return "MODEL_RULE"


MODEL_RULE = _ModelRule()


def collator_position_rule(
    tokens_per_second: "int | None | _ModelRule" = MODEL_RULE, position_rule: "PositionRule | _ModelRule" = MODEL_RULE
) -> tuple[PositionRule, bool]:
    """A collator's rule arguments -> (the rule it applies, whether its user chose it).

    ``position_rule`` is the rule; ``tokens_per_second`` its earlier spelling (``PositionRule(tokens_per_second)``).
    ``MODEL_RULE`` (neither set) applies Qwen2.5-VL's rule until a recipe binds the collator to its model's family;
    a rule set is the user's, which a recipe checks against the model.

    Raises:
        ValueError: both arguments set.
    """
    if position_rule is not MODEL_RULE and tokens_per_second is not MODEL_RULE:
        raise ValueError(
            f"set the video position rule once: position_rule={position_rule} or tokens_per_second={tokens_per_second}"
        )
    if position_rule is not MODEL_RULE:
        if not isinstance(position_rule, PositionRule):
            kind = type(position_rule).__name__
            raise TypeError(f"position_rule must be a PositionRule (qwenvl_data.rope), not {kind}")
        return position_rule, True
    if tokens_per_second is not MODEL_RULE:
        return PositionRule(tokens_per_second), True
    return PositionRule(), False


def rule_of(tokens_per_second: "int | None | _ModelRule", position_rule: "PositionRule | None") -> PositionRule | None:
    """The rule a collate function's arguments name, None when neither is set (see ``collator_position_rule``)."""
    rule, chosen = collator_position_rule(tokens_per_second, MODEL_RULE if position_rule is None else position_rule)
    return rule if chosen else None


def mrope_position_ids(
    input_ids: torch.Tensor,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    second_per_grid_ts: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    *,
    document_ids: torch.Tensor | None = None,
    spatial_merge_size: int = MERGE_SIZE,
    tokens_per_second: int | None = TOKENS_PER_SECOND,
    frames_apart: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """3D (temporal, height, width) rotary position ids for a padded or packed batch.

    Images are matched to ``<|image_pad|>`` runs and videos to ``<|video_pad|>`` runs in
    batch order (row 0 left to right, then row 1, ...), which is the order the collator
    concatenates them in.

    Args:
        input_ids: int64 [B, L] token ids.
        image_grid_thw: int64 [num_images, 3] (t, h, w) patch grids before merging, or None.
        video_grid_thw: int64 [num_videos, 3], or None.
        second_per_grid_ts: float [num_videos], seconds per temporal patch (``2 / fps``);
            None means 1.0 for every video, as in the reference. Unused when
            ``tokens_per_second`` is None.
        attention_mask: bool/int [B, L], True/1 on real tokens; None means no padding.
            Either padding side works: positions only count real tokens.
        document_ids: int64 [B, L], for packed rows: index of the sample inside its row
            (-1 on padding). Positions restart at 0 at the start of every sample.
        spatial_merge_size: patches merged per side into one LLM token (2 for Qwen2.5-VL).
        tokens_per_second: temporal ids per second of video (2 for Qwen2.5-VL); None: one
            temporal id per temporal patch, whatever its duration (Qwen2-VL's rule, see
            ``ModelFamily.tokens_per_second``).
        frames_apart: each temporal patch of a video is its own span ``[1, h, w]`` (Qwen3-VL's rule, see
            ``PositionRule``); its pad tokens may then be separated by text (the timestamps).

    Returns:
        position_ids: int64 [3, B, L]; 0 on padding (transformers 5.x's convention).
        rope_deltas: int64 [B, 1], (largest position + 1) - number of real tokens per row:
            what generation adds to the text positions after the prompt. For packed rows, the
            sum of the samples' own deltas.

    Example:
        >>> from qwenvl_data._constants import IMAGE_PAD_ID, VISION_END_ID, VISION_START_ID
        >>> ids = torch.tensor([[VISION_START_ID] + [IMAGE_PAD_ID] * 4 + [VISION_END_ID, 9]])
        >>> pos, deltas = mrope_position_ids(ids, image_grid_thw=torch.tensor([[1, 4, 4]]))
        >>> pos[:, 0].tolist()
        [[0, 1, 1, 1, 1, 3, 4], [0, 1, 1, 2, 2, 3, 4], [0, 1, 2, 1, 2, 3, 4]]
        >>> deltas.tolist()
        [[-2]]
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
    batch_size, seq_len = input_ids.shape
    device = input_ids.device
    valid = (
        torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.to(device).bool()
    )
    if document_ids is not None:
        valid = valid & (document_ids >= 0)
    flat_ids = input_ids.reshape(-1)
    flat_valid = valid.reshape(-1)

    if frames_apart and video_grid_thw is not None:
        video_grid_thw = video_grid_thw.to(device=device, dtype=torch.long).reshape(-1, 3)
        if (video_grid_thw < 1).any():
            raise ValueError(f"video_grid_thw {video_grid_thw.tolist()}: t, h, w must be >= 1")
        video_grid_thw = torch.repeat_interleave(video_grid_thw, video_grid_thw[:, 0], dim=0)
        video_grid_thw[:, 0] = 1
        second_per_grid_ts = None  # one temporal id per span: time does not scale it
    num_videos = 0 if video_grid_thw is None else video_grid_thw.reshape(-1, 3).shape[0]
    if second_per_grid_ts is None or tokens_per_second is None:
        video_seconds = torch.ones(num_videos, dtype=torch.float32, device=device)
    else:
        video_seconds = second_per_grid_ts.to(device).reshape(-1)
        if not video_seconds.is_floating_point():
            video_seconds = video_seconds.float()
        if video_seconds.numel() != num_videos:
            raise ValueError(f"second_per_grid_ts has {video_seconds.numel()} entries for {num_videos} videos")
    is_image = (flat_ids == IMAGE_PAD_ID) & flat_valid
    is_video = (flat_ids == VIDEO_PAD_ID) & flat_valid
    video_interval = video_seconds * (1 if tokens_per_second is None else tokens_per_second)
    vision = _locate_items(
        is_image, is_video, image_grid_thw, video_grid_thw, video_interval, seq_len, spatial_merge_size
    )

    advance = (flat_valid & ~(is_image | is_video)).long()
    if vision is not None:
        advance[vision.first_index] = vision.extent
    advance = advance.view(batch_size, seq_len)
    used = advance.cumsum(1)
    start = used - advance  # position of text tokens and span starts
    if document_ids is not None:
        previous_doc = torch.cat([torch.full_like(document_ids[:, :1], -2), document_ids[:, :-1]], dim=1)
        doc_begins = valid & (document_ids != previous_doc)
        # ``start`` never decreases along a row, so a running max carries each document's base.
        start = start - torch.where(doc_begins, start, 0).cummax(1).values

    position_ids = torch.where(valid, start, 0).unsqueeze(0).repeat(3, 1, 1)
    flat_start = start.reshape(-1)
    flat_positions = position_ids.view(3, -1)
    if vision is not None:
        flat_positions[:, vision.token_index] = vision.positions(flat_start[vision.first_index])

    # Positions used by a row (largest id + 1 when unpacked) minus its real tokens.
    rope_deltas = used[:, -1:] - valid.sum(1, keepdim=True)
    return position_ids, rope_deltas
