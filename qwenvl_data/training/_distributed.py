"""Process-group setup and FSDP2 sharding, so one recipe body serves one device and N ranks alike."""

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._composable import checkpoint as checkpoint_activations
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard


def launched_by_torchrun() -> bool:
    """torchrun (and `tune run --nproc_per_node`) export these; plain `python` does not."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: torch.device, timeout_s: float = 600.0) -> tuple[int, int]:
    """Join the torchrun process group: NCCL on GPUs, gloo on CPU.

    Args:
        device: the device this rank trains on.
        timeout_s: how long a collective waits for the slowest rank before failing (config
            ``collective_timeout_s``), so a rank that stalls outside a data read (see ``_watchdog``) makes the
            others fail instead of hang.

    Returns:
        (rank, world_size)
    """
    if not launched_by_torchrun():
        raise RuntimeError(
            "the distributed recipes must be launched by torchrun: "
            "`tune run --nproc_per_node N recipes/<name>.py --config ...` or `torchrun --nproc_per_node N ...`"
        )
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=float(timeout_s)))
    return dist.get_rank(), dist.get_world_size()


def rank_and_world() -> tuple[int, int]:
    """(rank, world_size), (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """Every entry of every nn.ModuleList: the decoder layers and the vision blocks.

    These are the units that are sharded, checkpointed and compiled one by one; finding them
    structurally keeps this independent of the layer class names.
    """
    return [block for module in model.modules() if isinstance(module, nn.ModuleList) for block in module]


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each repeated block's activations in backward (in place, parameter names unchanged)."""
    for block in repeated_blocks(model):
        checkpoint_activations(block)


def compile_blocks(model: nn.Module) -> None:
    """torch.compile each repeated block in place (names unchanged, so checkpoints stay portable)."""
    for block in repeated_blocks(model):
        block.compile()


def shard_model(model: nn.Module, param_dtype: torch.dtype | None = None, reshard_after_forward: bool = True) -> None:
    """FSDP2: shard each repeated block, then the rest of the model, over all ranks.

    Args:
        model: built on every rank (same init, or on the meta device before loading weights).
        param_dtype: dtype for compute (mixed precision); None keeps the parameters' dtype.
        reshard_after_forward: free gathered parameters after forward (less memory, one more all-gather).
    """
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in repeated_blocks(model):
        fully_shard(block, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mp_policy=policy, reshard_after_forward=reshard_after_forward)


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (identity on one process); returns a new tensor."""
    total = value.detach().clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def destroy_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
