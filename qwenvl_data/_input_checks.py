"""The shape rules of the model's inputs, in one place for the collator (per sample) and the model (per batch):
a wrong shape is an error naming the key, never a tensor that broadcasts or indexes into something else."""

import torch


def grid_problem(grid: torch.Tensor, merge_size: int) -> str | None:
    """Why a ``[n, 3]`` (t, h, w) patch grid cannot be right (None when it can): every entry >= 1, and h, w
    multiples of ``merge_size`` (the 2x2 merge the placeholder count assumes)."""
    if grid.dim() != 2 or grid.shape[1] != 3:
        return f"must be [n, 3] (t, h, w per item), got shape {tuple(grid.shape)}"
    if grid.is_floating_point():
        return f"must hold integers, got {grid.dtype}"
    if grid.numel() and int(grid.min()) < 1:
        return f"must hold only positive sizes, got {grid.tolist()}"
    if grid.numel() and bool((grid[:, 1:] % merge_size != 0).any()):
        return f"h and w must be multiples of the merge size {merge_size}, got {grid.tolist()}"
    return None


def check_model_inputs(
    tokens: torch.Tensor,
    position_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    grids: dict[str, torch.Tensor | None],
    merge_size: int,
    cached: int | None,
) -> None:
    """Refuse inputs whose shapes disagree with ``tokens`` [B, L].

    Args:
        position_ids: must be [3, B, L] (one row per MRoPE section; [3, 1, L] does not stand for a batch).
        attention_mask: must be [B, L]; with KV caches on (``cached`` tokens in them, None when off),
            [B, >= cached + L].
        grids: ``{"image_grid_thw": ..., "video_grid_thw": ...}``, see ``grid_problem``.

    Raises:
        ValueError: naming the key, its shape and the shape it must have.
    """
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be [B, L], got shape {tuple(tokens.shape)}")
    batch, length = tokens.shape
    if position_ids is not None and tuple(position_ids.shape) != (3, batch, length):
        raise ValueError(f"position_ids must be [3, B, L] = [3, {batch}, {length}] for tokens [{batch}, {length}], "
                         f"got {list(position_ids.shape)}")  # fmt: skip
    if attention_mask is not None:
        needed = length + (cached or 0)
        ok = attention_mask.dim() == 2 and attention_mask.shape[0] == batch and (
            attention_mask.shape[1] == length if cached is None else attention_mask.shape[1] >= needed)  # fmt: skip
        if not ok:
            want = f"[{batch}, {length}]" if cached is None else f"[{batch}, >= {needed}] ({cached} cached tokens)"
            raise ValueError(f"attention_mask must be {want} for tokens [{batch}, {length}], "
                             f"got {list(attention_mask.shape)}")  # fmt: skip
    for key, grid in grids.items():
        if grid is not None and (problem := grid_problem(grid, merge_size)) is not None:
            raise ValueError(f"{key} {problem}")
