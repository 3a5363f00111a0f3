"""Checkpoints of a run: pretrained weights in, atomic resumable training states, final HF weights out.

A training state is one directory `output_dir/training_state/step_<k>` holding the model and
optimizer (torch.distributed.checkpoint, so sharded FSDP2 states save without gathering) and one
`trainer_rank<r>.pt` per rank (LR scheduler, RNG states, data-loader position, counters). It is
written under a `.partial` name and renamed with os.replace once every rank is done, so a run
killed mid-save leaves the previous state intact and never a half-written one.
"""

import json
import os
import random
import re
import shutil
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.tensor import DTensor

from qwenvl_data.training._distributed import barrier, rank_and_world

_STATE_DIR_PATTERN = re.compile(r"^step_(\d+)$")
_COMPLETE_MARKER = "complete.json"


def capture_rng_state() -> dict[str, Any]:
    """Every RNG a training step can draw from, so a resumed run draws the same numbers."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _publish_dir(partial: Path, final: Path) -> None:
    """Make `partial` appear as `final` in one rename (an older `final` is moved aside first)."""
    if final.exists():
        stale = final.with_name(final.name + ".stale")
        shutil.rmtree(stale, ignore_errors=True)
        os.replace(final, stale)
        os.replace(partial, final)
        shutil.rmtree(stale)
    else:
        os.replace(partial, final)


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """A fresh ``<final>.partial`` directory to write into, published as ``final`` in one rename when the
    block succeeds; a block that fails leaves ``final`` as it was."""
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    yield partial
    _publish_dir(partial, final)


@contextmanager
def _single_process_dcp_is_intended() -> Iterator[None]:
    """torch.distributed.checkpoint warns when used without a process group; one device is a normal case here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to (save|load) in a single process.*")
        yield


def _is_sharded(model: nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in model.parameters())


class TrainingCheckpointer:
    """Loads pretrained HF weights, saves and restores resumable training states, writes final HF weights.

    Args:
        output_dir: the run's directory (training states in `training_state/`, final weights in `final_dir_name`).
        checkpoint_dir: a local HF model directory (config.json + *.safetensors) to start from;
            None trains from the model builder's random init.
        save_every_n_steps: save a training state every this many optimizer steps (None: only at
            the end of each epoch).
        keep_last_n: how many training states to keep on disk (older ones are deleted).
        final_dir_name: name of the HF directory written at the end of training.
    """

    def __init__(
        self,
        output_dir: str,
        checkpoint_dir: str | None = None,
        save_every_n_steps: int | None = None,
        keep_last_n: int = 1,
        final_dir_name: str = "hf_model",
    ) -> None:
        if save_every_n_steps is not None and save_every_n_steps < 1:
            raise ValueError(f"checkpointer.save_every_n_steps must be >= 1 or null, got {save_every_n_steps}")
        if keep_last_n < 1:
            raise ValueError(f"checkpointer.keep_last_n must be >= 1, got {keep_last_n}")
        self.output_dir = Path(output_dir)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        if self.checkpoint_dir is not None and not (self.checkpoint_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"checkpointer.checkpoint_dir={str(self.checkpoint_dir)!r} is not a Hugging Face model "
                "directory (no config.json); point it at a local download of e.g. Qwen/Qwen2.5-VL-7B-Instruct"
            )
        self.save_every_n_steps = save_every_n_steps
        self.keep_last_n = keep_last_n
        self.final_dir = self.output_dir / final_dir_name
        self.state_root = self.output_dir / "training_state"

    # ---- pretrained weights -------------------------------------------------------------------
    def pretrained_state_dict(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The checkpoint_dir weights under our module names (empty when training from scratch)."""
        if self.checkpoint_dir is None:
            return {}
        from qwenvl_data.models import load_hf_model

        return load_hf_model(self.checkpoint_dir, dtype=dtype).state_dict()

    def load_pretrained(self, model: nn.Module, dtype: torch.dtype, trainable_only_missing: bool = False) -> None:
        """Copy checkpoint_dir's weights into an unsharded model.

        Args:
            model: the freshly built model.
            dtype: dtype to read the weights in.
            trainable_only_missing: True for LoRA models, whose adapter weights are not in the
                checkpoint; any other missing or unexpected key is still an error.
        """
        if self.checkpoint_dir is None:
            return
        missing, unexpected = model.load_state_dict(self.pretrained_state_dict(dtype), strict=False)
        if trainable_only_missing:
            missing = [k for k in missing if not _is_adapter_key(k)]
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {self.checkpoint_dir} does not match the configured model: "
                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
            )

    # ---- resumable training state -------------------------------------------------------------
    def due(self, step: int) -> bool:
        return self.save_every_n_steps is not None and step % self.save_every_n_steps == 0

    def latest_state(self) -> Path | None:
        """The newest complete training state under output_dir, or None."""
        if not self.state_root.is_dir():
            return None
        complete = [
            (int(m.group(1)), p)
            for p in self.state_root.iterdir()
            if (m := _STATE_DIR_PATTERN.match(p.name)) and (p / _COMPLETE_MARKER).is_file()
        ]
        return max(complete)[1] if complete else None

    def save_state(
        self,
        step: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        trainer_state: dict[str, Any],
    ) -> Path:
        """Atomically save a resumable state after optimizer step `step` (collective: all ranks call it).

        Args:
            trainer_state: this rank's small state (LR scheduler, data-loader position, counters);
                RNG states are added here.
        """
        rank, world = rank_and_world()
        final = self.state_root / f"step_{step:07d}"
        partial = self.state_root / f".step_{step:07d}.partial"
        if rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        barrier()
        model_sd, optim_sd = get_state_dict(model, optimizer)
        with _single_process_dcp_is_intended():
            dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=partial / "model_optimizer")
        torch.save({**trainer_state, "rng": capture_rng_state()}, partial / f"trainer_rank{rank}.pt")
        barrier()
        if rank == 0:
            (partial / _COMPLETE_MARKER).write_text(json.dumps({"step": step, "world_size": world}))
            _publish_dir(partial, final)
            self._prune()
        barrier()
        return final

    def load_state(self, path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Restore model, optimizer and RNGs from a saved state; returns this rank's trainer_state."""
        path = Path(path)
        marker = path / _COMPLETE_MARKER
        if not marker.is_file():
            raise FileNotFoundError(f"{path} is not a complete training state (no {_COMPLETE_MARKER})")
        rank, world = rank_and_world()
        saved_world = json.loads(marker.read_text())["world_size"]
        if saved_world != world:
            raise ValueError(
                f"{path} was saved by {saved_world} rank(s); resuming needs the same number, got {world} "
                "(the data-loader position is per rank)"
            )
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optimizer": optim_sd}
        with _single_process_dcp_is_intended():
            dcp.load(state, checkpoint_id=path / "model_optimizer")
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        trainer_state = torch.load(path / f"trainer_rank{rank}.pt", weights_only=False)
        restore_rng_state(trainer_state.pop("rng"))
        return trainer_state

    def _prune(self) -> None:
        states = sorted(
            (int(m.group(1)), p) for p in self.state_root.iterdir() if (m := _STATE_DIR_PATTERN.match(p.name))
        )
        for _, old in states[: -self.keep_last_n]:
            shutil.rmtree(old)

    # ---- final weights ------------------------------------------------------------------------
    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Unsharded weights on CPU (collective under FSDP2: every rank calls it, rank 0 gets them)."""
        if _is_sharded(model):
            return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}

    def save_hf(
        self,
        model: nn.Module,
        build_plain_model: Callable[[], nn.Module],
        out_dir: Path | None = None,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> Path | None:
        """Write weights as an HF directory (config.json + safetensors), atomically; collective.

        Args:
            model: the trained model (sharded or not).
            build_plain_model: builds the same architecture unsharded and without adapters; used on
                rank 0 (on the meta device, then filled) when `model` is sharded or `state_dict` is given.
            out_dir: defaults to the final directory.
            state_dict: weights to save instead of `model`'s (e.g. LoRA-merged weights).

        Returns:
            The directory on rank 0, None on other ranks.
        """
        from qwenvl_data.models import save_hf_model

        out_dir = out_dir or self.final_dir
        if state_dict is None and _is_sharded(model):
            state_dict = self.full_state_dict(model)
        rank, _ = rank_and_world()
        if rank == 0:
            to_save = model
            if state_dict is not None:
                with torch.device("meta"):
                    to_save = build_plain_model()
                to_save.load_state_dict(state_dict, assign=True)
            with atomic_directory(out_dir) as partial:
                save_hf_model(to_save, partial)
                if out_dir == self.final_dir:
                    _carry_step_dirs(out_dir, partial)
        barrier()
        return out_dir if rank == 0 else None


def _carry_step_dirs(final_dir: Path, partial: Path) -> None:
    """Keep the intermediate ``step_<k>`` HF directories (save_hf_every_n_steps) that live inside the final
    directory when the final weights replace it: moved (renamed, not copied) into the new directory."""
    from qwenvl_data.training._periodic import hf_step_dirs

    for step_dir in hf_step_dirs(final_dir):
        os.replace(step_dir, partial / step_dir.name)


def _is_adapter_key(key: str) -> bool:
    """LoRA/DoRA parameters (torchtune's names): lora_a, lora_b, magnitude."""
    return any(part in ("lora_a", "lora_b", "magnitude") for part in key.split("."))
