"""Which rank of how many this process is: explicit values win (tests simulate ranks), else torch.distributed."""

import torch.distributed as dist


def rank_and_world_size(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``(rank, world_size)``: the given values, else the initialised process group's, else ``(0, 1)``."""
    if rank is None or world_size is None:
        initialised = dist.is_available() and dist.is_initialized()
        rank = rank if rank is not None else (dist.get_rank() if initialised else 0)
        world_size = world_size if world_size is not None else (dist.get_world_size() if initialised else 1)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world size {world_size}")
    return rank, world_size
