"""Batching for Qwen2.5-VL: pad tokens and labels, concatenate vision inputs, add MRoPE positions.

Samples are the text transform's output: ``tokens`` and ``labels`` (lists or 1-D tensors) and,
when the sample has images/videos, their pixel tensors and grids. Every sample is checked before
anything is stacked, so a bad sample is reported by its index in the batch instead of surfacing
later as a shape error inside the model. Other sample keys (``mask``, ``id``, ...) are not carried
into the batch: ``labels`` already says what is trained.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from qwenvl_data._input_checks import grid_problem
from qwenvl_data.vision._concat import concat_rows
from qwenvl_data._constants import IGNORE_INDEX, IMAGE_PAD_ID, MERGE_SIZE, PAD_ID, VIDEO_PAD_ID
from qwenvl_data.errors import PlaceholderMismatchError, SampleError, SampleTooLongError, sample_name
from qwenvl_data.rope import MODEL_RULE, PositionRule, collator_position_rule, mrope_position_ids, rule_of

__all__ = ["Qwen2_5_VLCollator", "padded_collate_qwen2_5_vl"]


@dataclass(frozen=True)
class _Modality:
    """The sample keys that describe one kind of vision input, and its pad token."""

    name: str
    pad_id: int
    keys: tuple[str, ...]  # (pixels, grid, extras...): a sample has all of them or none

    @property
    def pixel_key(self) -> str:
        return self.keys[0]

    @property
    def grid_key(self) -> str:
        return self.keys[1]


MODALITIES = (
    _Modality("image", IMAGE_PAD_ID, ("pixel_values", "image_grid_thw")),
    _Modality("video", VIDEO_PAD_ID, ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")),
)


@dataclass
class CheckedSample:
    """A sample that passed ``check_samples``, with its token ids as tensors."""

    name: str  # "sample 3 (id)", 3 being its index in the incoming batch, None entries counted
    tokens: torch.Tensor  # int64 [n]
    labels: torch.Tensor | None  # int64 [n]; None when the batch carries no labels (generation)
    media: dict[str, torch.Tensor]  # the vision keys it has, as tensors
    family: str | None = None  # the model_type of the transform that made it (its "family" key), when known


def _as_ids(value: Any, key: str, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        ids = value.long()
    elif isinstance(value, list):
        try:  # numpy reads a list of ints ~8x faster than torch.tensor does
            ids = torch.from_numpy(np.fromiter(value, np.int64, len(value)))
        except (TypeError, ValueError) as error:
            raise SampleError(f"{name}: {key} must be a flat list of ints: {error}") from error
    else:
        ids = torch.from_numpy(np.asarray(value, dtype=np.int64))
    if ids.dim() != 1:
        raise SampleError(f"{name}: {key} must be a flat list or 1-D tensor, got shape {tuple(ids.shape)}")
    return ids


def _first_label_ignored(labels: torch.Tensor) -> torch.Tensor:
    """``labels`` with its first entry set to IGNORE_INDEX.

    Losses shift labels (position i predicts label i + 1), so a sample's first label can only be
    predicted by whatever sits before the sample in its row: left padding, or the previous sample
    of a packed row. No position of the sample itself predicts it, so on its own it is never a
    target; ignoring it keeps every shift inside one sample whatever ``train_on_input`` trains.
    """
    if labels.numel() == 0 or labels[0] == IGNORE_INDEX:
        return labels
    labels = labels.clone()
    labels[0] = IGNORE_INDEX
    return labels


def _pad_token_counts(tokens: list[torch.Tensor]) -> list[list[int]]:
    """Per sample, its number of pad tokens of each modality (in MODALITIES order), in one batched pass."""
    last = torch.tensor([ids.numel() for ids in tokens]).cumsum(0) - 1
    flat = torch.cat(tokens)
    running = torch.stack([flat == modality.pad_id for modality in MODALITIES]).cumsum(1)[:, last]
    return torch.diff(running, dim=1, prepend=torch.zeros_like(running[:, :1])).t().tolist()


def _check_media(sample: dict, pad_counts: list[int], name: str) -> dict[str, torch.Tensor]:
    """The sample's vision tensors, after checking they agree with each other and with its pad tokens."""
    media = {}
    for modality, num_pad_tokens in zip(MODALITIES, pad_counts):
        present = [key for key in modality.keys if key in sample]
        if present and len(present) < len(modality.keys):
            missing = [key for key in modality.keys if key not in sample]
            raise SampleError(f"{name}: has {', '.join(present)} but no {', '.join(missing)}")
        if not present:
            if num_pad_tokens:
                raise PlaceholderMismatchError(
                    f"{name}: {num_pad_tokens} {modality.name} pad tokens but no {modality.grid_key}"
                )
            continue
        grid = torch.as_tensor(sample[modality.grid_key])
        pixels = torch.as_tensor(sample[modality.pixel_key])
        if (problem := grid_problem(grid, MERGE_SIZE)) is not None:
            raise SampleError(f"{name}: {modality.grid_key} {problem}")
        num_patches = sum(t * h * w for t, h, w in grid.tolist())
        if num_pad_tokens != num_patches // MERGE_SIZE**2:
            raise PlaceholderMismatchError(
                f"{name}: {num_pad_tokens} {modality.name} pad tokens but {modality.grid_key} "
                f"{grid.tolist()} needs {num_patches // MERGE_SIZE**2}"
            )
        if pixels.dim() != 2 or pixels.shape[0] != num_patches:
            raise SampleError(
                f"{name}: {modality.pixel_key} has shape {tuple(pixels.shape)} but {modality.grid_key} "
                f"{grid.tolist()} needs {num_patches} patch rows"
            )
        for extra in modality.keys[2:]:
            if torch.as_tensor(sample[extra]).numel() != grid.shape[0]:
                raise SampleError(f"{name}: {extra} needs one entry per {modality.name} ({grid.shape[0]})")
        media.update({key: torch.as_tensor(sample[key]) for key in modality.keys})
    return media


def check_samples(batch: list[dict | None]) -> list[CheckedSample]:
    """Drop ``None`` entries (samples the dataset skipped) and check the rest.

    Raises:
        ValueError: the batch has no samples left.
        SampleError: a sample without tokens, labels of another length, labels missing while
            other samples have them, vision keys without their partners, or a pad-token count
            that disagrees with its grids. The message names the sample's index in ``batch``.
    """
    indexed = [(index, sample) for index, sample in enumerate(batch) if sample is not None]
    if not indexed:
        raise ValueError(f"empty batch: all {len(batch)} samples are None (skipped by the dataset)")
    with_labels = ["labels" in sample for _, sample in indexed]
    checked = []
    for (index, sample), has_labels in zip(indexed, with_labels):
        name = sample_name(index, sample.get("id"))
        if "tokens" not in sample:
            raise SampleError(f"{name}: no 'tokens'")
        tokens = _as_ids(sample["tokens"], "tokens", name)
        if tokens.numel() == 0:
            raise SampleError(f"{name}: no tokens")
        if has_labels != any(with_labels):
            raise SampleError(f"{name}: no 'labels' while other samples in the batch have them")
        labels = _as_ids(sample["labels"], "labels", name) if has_labels else None
        if labels is not None and labels.shape != tokens.shape:
            raise SampleError(f"{name}: {labels.numel()} labels for {tokens.numel()} tokens")
        if labels is not None:
            labels = _first_label_ignored(labels)
        checked.append(CheckedSample(name, tokens, labels, {}, sample.get("family")))
    pad_counts = _pad_token_counts([sample.tokens for sample in checked])
    for sample, (_, raw), counts in zip(checked, indexed, pad_counts):
        sample.media = _check_media(raw, counts, sample.name)
    return checked


def concat_media(samples: list[CheckedSample]) -> dict[str, torch.Tensor]:
    """Vision inputs of all samples, concatenated in sample order; keys of absent modalities omitted.

    Returns:
        pixel_values: float [sum N_i, 1176]; image_grid_thw: int64 [num_images, 3];
        pixel_values_videos: float [sum N_i, 1176]; video_grid_thw: int64 [num_videos, 3];
        second_per_grid_ts: float32 [num_videos].
    """
    batch = {}
    for modality in MODALITIES:
        with_modality = [s.media for s in samples if modality.pixel_key in s.media]
        if with_modality:
            batch.update({key: concat_rows([media[key] for media in with_modality]) for key in modality.keys})
            batch[modality.grid_key] = batch[modality.grid_key].long()
    if "second_per_grid_ts" in batch:
        batch["second_per_grid_ts"] = batch["second_per_grid_ts"].float()
    return batch


def pad_rows(rows: list[torch.Tensor], length: int, value: int, padding_side: str = "right") -> torch.Tensor:
    """Stack 1-D int64 rows into [len(rows), length], filling the rest with ``value``."""
    out = torch.full((len(rows), length), value, dtype=torch.long)
    for r, row in enumerate(rows):
        if padding_side == "right":
            out[r, : row.numel()] = row
        else:
            out[r, length - row.numel() :] = row
    return out


def _check_options(padding_side: str, pad_to_multiple_of: int | None, max_seq_len: int | None) -> None:
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
        raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
    if max_seq_len is not None and pad_to_multiple_of is not None and max_seq_len % pad_to_multiple_of:
        raise ValueError(f"max_seq_len={max_seq_len} is not a multiple of pad_to_multiple_of={pad_to_multiple_of}")


def check_fits(samples: list[CheckedSample], max_seq_len: int) -> None:
    """Raise SampleTooLongError naming the first sample longer than ``max_seq_len`` (never truncate)."""
    for sample in samples:
        if sample.tokens.numel() > max_seq_len:
            raise SampleTooLongError(f"{sample.name}: {sample.tokens.numel()} tokens > max_seq_len={max_seq_len}")


def padded_collate_qwen2_5_vl(
    batch: list[dict | None],
    padding_side: str = "right",
    pad_to_multiple_of: int | None = None,
    max_seq_len: int | None = None,
    tokens_per_second: int | None = MODEL_RULE,
    *,
    position_rule: PositionRule | None = None,
) -> dict[str, torch.Tensor]:
    """Pad a list of tokenized samples into one batch with MRoPE position ids.

    Args:
        batch: samples from the text transform (``tokens``, ``labels``, optional vision keys);
            ``None`` entries (skipped by the dataset) are dropped.
        padding_side: "right" for training, "left" for generation.
        pad_to_multiple_of: round the padded length up to a multiple of this.
        max_seq_len: pad every batch to exactly this length (fixed shapes); a longer sample
            raises SampleTooLongError, nothing is truncated.
        tokens_per_second: the earlier spelling of ``position_rule``: ``PositionRule(tokens_per_second)``.
        position_rule: the family's position rule for videos (``ModelFamily.position_rule``); default the rule
            of the family whose transform made the samples (their ``family`` key), else Qwen2.5-VL's
            (``PositionRule()``: 2 temporal ids per second).

    Returns:
        A dict with
        - ``tokens``: int64 [B, L], padded with ``<|endoftext|>`` (PAD_ID).
        - ``labels``: int64 [B, L], -100 on padding and on each sample's first token (which no position of
          the sample predicts; see ``_first_label_ignored``); omitted when no sample has labels.
        - ``attention_mask``: bool [B, L], True on real tokens.
        - ``position_ids``: int64 [3, B, L], MRoPE (temporal, height, width); 0 on padding.
        - ``rope_deltas``: int64 [B, 1], largest position + 1 - real length (for generation).
        - ``pixel_values`` float [sum N_i, 1176] and ``image_grid_thw`` int64 [num_images, 3],
          in sample order, only when some sample has images.
        - ``pixel_values_videos``, ``video_grid_thw`` int64 [num_videos, 3] and
          ``second_per_grid_ts`` float32 [num_videos], only when some sample has video.

    Raises:
        ValueError: bad options, or every sample is None.
        SampleError: a malformed sample (see ``check_samples``), or one longer than ``max_seq_len``.

    Example:
        >>> batch = padded_collate_qwen2_5_vl([{"tokens": [1, 2, 3], "labels": [-100, 2, 3]},
        ...                                    {"tokens": [4], "labels": [4]}])
        >>> batch["tokens"].tolist(), batch["attention_mask"].tolist()
        ([[1, 2, 3], [4, 151643, 151643]], [[True, True, True], [True, False, False]])
    """
    _check_options(padding_side, pad_to_multiple_of, max_seq_len)
    samples = check_samples(batch)
    lengths = torch.tensor([s.tokens.numel() for s in samples])
    if max_seq_len is not None:
        check_fits(samples, max_seq_len)
        length = max_seq_len
    else:
        length = int(lengths.max())
        if pad_to_multiple_of is not None:
            length = -(-length // pad_to_multiple_of) * pad_to_multiple_of

    tokens = pad_rows([s.tokens for s in samples], length, PAD_ID, padding_side)
    columns = torch.arange(length)
    if padding_side == "right":
        attention_mask = columns < lengths[:, None]
    else:
        attention_mask = columns >= length - lengths[:, None]
    labels = None
    if samples[0].labels is not None:
        labels = pad_rows([s.labels for s in samples], length, IGNORE_INDEX, padding_side)
    rule = rule_of(tokens_per_second, position_rule)
    return assemble_batch(samples, tokens, labels, attention_mask, position_rule=rule)


def samples_rule(samples: list[CheckedSample]) -> PositionRule:
    """The video position rule of the family whose transform made ``samples`` (their ``family`` key, which
    ``Qwen2_5_VLTransform`` writes); Qwen2.5-VL's for samples that do not say. What a collator applies when
    no rule was given to it or bound by a recipe, so a Qwen2-VL or Qwen3-VL transform's samples get their own
    family's positions in your own loop too.

    Raises:
        ValueError: the samples come from transforms of families with different rules, naming them.
    """
    from qwenvl_data.models._families import model_family  # the models package imports this module's users

    rules = {sample.family: model_family(sample.family, sample.name).position_rule
             for sample in samples if sample.family is not None}  # fmt: skip
    if len(set(rules.values())) > 1:
        raise ValueError(
            f"a batch of samples from transforms of families {sorted(rules)}, whose video positions differ: "
            "collate each family's samples apart, or give the collator its position_rule"
        )
    return next(iter(rules.values()), PositionRule())


def assemble_batch(
    samples: list[CheckedSample],
    tokens: torch.Tensor,
    labels: torch.Tensor | None,
    attention_mask: torch.Tensor,
    document_ids: torch.Tensor | None = None,
    *,
    position_rule: PositionRule | None = None,
) -> dict[str, torch.Tensor]:
    """The batch dict from padded rows: adds MRoPE positions and the samples' vision inputs.

    Args:
        samples: the samples in the order their tokens appear in ``tokens`` (row by row).
        tokens, labels: int64 [B, L]; labels may be None.
        attention_mask: bool [B, L].
        document_ids: int64 [B, L] for packed rows (positions restart per sample), else None.
        position_rule: the family's video position rule (``ModelFamily.position_rule``); None: the rule of the
            samples' family (``samples_rule``).
    """
    position_rule = position_rule or samples_rule(samples)
    media = concat_media(samples)
    out = {"tokens": tokens}
    if labels is not None:
        out["labels"] = labels
    out["attention_mask"] = attention_mask
    out["position_ids"], out["rope_deltas"] = mrope_position_ids(
        tokens,
        media.get("image_grid_thw"),
        media.get("video_grid_thw"),
        media.get("second_per_grid_ts"),
        attention_mask,
        document_ids=document_ids,
        tokens_per_second=position_rule.tokens_per_second,
        frames_apart=position_rule.frames_apart,
    )
    out.update(media)
    return out


class Qwen2_5_VLCollator:
    """``padded_collate_qwen2_5_vl`` with its options bound: a picklable ``collate_fn`` for DataLoader.

    YAML: ``collate_fn: {_component_: qwenvl_data.collate.Qwen2_5_VLCollator, padding_side: right}``.

    Args:
        padding_side: "right" (training) or "left" (generation).
        pad_to_multiple_of: round the padded length up to a multiple of this.
        max_seq_len: pad every batch to exactly this length; longer samples are an error.
        tokens_per_second: the earlier spelling of ``position_rule``: 2 (Qwen2.5-VL), None (Qwen2-VL).
        position_rule: the family's video position rule (``qwenvl_data.rope.PositionRule``). Leave both out
            (``MODEL_RULE``) and the recipes take it from the model's family; set, it must agree with the model.
            Unbound and unset, the rule of the family whose transform made the samples applies (their
            ``family`` key), else Qwen2.5-VL's.
    """

    def __init__(
        self,
        padding_side: str = "right",
        pad_to_multiple_of: int | None = None,
        max_seq_len: int | None = None,
        tokens_per_second: int | None = MODEL_RULE,
        position_rule: PositionRule = MODEL_RULE,
    ) -> None:
        _check_options(padding_side, pad_to_multiple_of, max_seq_len)
        self.padding_side = padding_side
        self.pad_to_multiple_of = pad_to_multiple_of
        self.max_seq_len = max_seq_len
        self.position_rule, self.position_rule_set = collator_position_rule(tokens_per_second, position_rule)

    @property
    def tokens_per_second(self) -> int | None:
        """The rule's ``tokens_per_second`` (the earlier name of the setting)."""
        return self.position_rule.tokens_per_second

    def __call__(self, batch: list[dict | None]) -> dict[str, torch.Tensor]:
        """See ``padded_collate_qwen2_5_vl``."""
        return padded_collate_qwen2_5_vl(
            batch, self.padding_side, self.pad_to_multiple_of, self.max_seq_len,
            position_rule=self.position_rule if self.position_rule_set else None,
        )  # fmt: skip
