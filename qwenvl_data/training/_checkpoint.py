"""Checkpoints of a run: pretrained weights in, atomic resumable training states, final HF weights out.

A training state is one directory `output_dir/training_state/step_<k>` holding the trained parameters
and the optimizer (torch.distributed.checkpoint, so sharded FSDP2 states save without gathering) and one
`trainer_rank<r>.pt` per rank (LR scheduler, RNG states, data-loader position, counters). Frozen
parameters (a LoRA run's base model, a frozen vision tower) are not saved: a resumed run rebuilds them
exactly as the first run did (from `checkpoint_dir`, or the seeded init), so a LoRA state holds the
adapters, the modules trained in full and their optimizer state only. It is
written under a `.partial` name and renamed with os.replace once every rank is done, so a run
killed mid-save leaves the previous state intact and never a half-written one.
"""

import errno
import json
import os
import pickle
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
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.tensor import DTensor
from torchtune.modules import TiedLinear

from qwenvl_data._files import read_json
from qwenvl_data.training._distributed import barrier, rank_and_world
from qwenvl_data.training._integrity import damaged_files, file_digests
from qwenvl_data.training._nonfinite import check_finite_on_every_rank
from qwenvl_data.training._refusal import MissingInputError

_STATE_DIR_PATTERN = re.compile(r"^step_(\d+)$")
_COMPLETE_MARKER = "complete.json"
_TRAINED_ONLY = StateDictOptions(ignore_frozen_params=True)


class DamagedStateError(ValueError):
    """A training state whose files differ from the checksums written when it was saved."""


def state_problems(path: Path) -> list[str]:
    """Why the training state at ``path`` cannot be trusted (empty when every file matches its saved checksum;
    also empty for a state saved before checksums were kept)."""
    try:
        marker = read_json(path / _COMPLETE_MARKER)
    except (OSError, ValueError) as error:
        return [str(error)]
    return damaged_files(path, marker.get("files", {}))


def _from_rank0(value: Any) -> Any:
    """``value`` as rank 0 has it, on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


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
    block succeeds; a block that fails leaves ``final`` as it was and removes the partial directory."""
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # nothing half-written is left behind
        raise
    _publish_dir(partial, final)


def _nbytes(*state_dicts: dict[str, Any]) -> int:
    """Bytes of every tensor in (nested) state dicts: what writing them needs on disk (this rank's shards)."""

    def size(value: Any) -> int:
        if isinstance(value, DTensor):
            value = value.to_local()
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        if isinstance(value, dict):
            return sum(size(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return sum(size(v) for v in value)
        return 0

    return sum(size(sd) for sd in state_dicts)


@contextmanager
def naming_failed_writes(directory: Path, needed_bytes: int) -> Iterator[None]:
    """Re-raise a failed write (a full disk, a file-size limit, an I/O error) as an OSError that names
    ``directory``, the space the save needs and the space left, instead of torch's bare
    ``[enforce fail at inline_container.cc]``, DCP's multi-line ``CheckpointException`` or an unnamed
    ``No space left on device``."""
    try:
        yield
    except (OSError, RuntimeError, CheckpointException) as error:
        cause = _first_failure(error)
        free = shutil.disk_usage(directory if directory.exists() else directory.parent).free
        code = getattr(cause, "errno", None)
        if code is None and free < needed_bytes:
            code = errno.ENOSPC
        detail = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause).splitlines()[0]
        raise OSError(
            code or errno.EIO,
            f"writing {directory} failed: {detail}. The save needs about {needed_bytes / 2**20:.1f} MiB; "
            f"{free / 2**20:.1f} MiB are free on that disk",
        ) from error


def _first_failure(error: BaseException) -> BaseException:
    """The exception behind DCP's CheckpointException (which wraps each rank's), or ``error`` itself."""
    if isinstance(error, CheckpointException) and error.failures:
        return next(iter(error.failures.values()))[0]
    return error


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
        adapter_dir: a PEFT LoRA/DoRA adapter directory (ours or made by PEFT) for `checkpoint_dir`,
            loaded into the LoRA model to evaluate it or continue training; the model's LoRA
            settings (modules, rank, alpha, use_dora) must match it.

    Attributes:
        transform: the run's `Qwen2_5_VLTransform`, set by the recipe; HF directories get its
            tokenizer files and pixel budgets (None: the checkpoint's, else the defaults).
    """

    def __init__(
        self,
        output_dir: str,
        checkpoint_dir: str | None = None,
        save_every_n_steps: int | None = None,
        keep_last_n: int = 1,
        final_dir_name: str = "hf_model",
        adapter_dir: str | None = None,
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
        self.adapter_dir = Path(adapter_dir) if adapter_dir else None
        if self.adapter_dir is not None and self.checkpoint_dir is None:
            raise ValueError("checkpointer.adapter_dir needs checkpointer.checkpoint_dir: the base model it adapts")
        if self.adapter_dir is not None and not (self.adapter_dir / "adapter_config.json").is_file():
            raise FileNotFoundError(f"checkpointer.adapter_dir={str(self.adapter_dir)!r} is not a PEFT adapter "
                                    "directory (no adapter_config.json)")  # fmt: skip
        self.transform = None
        self.save_every_n_steps = save_every_n_steps
        self.keep_last_n = keep_last_n
        self.final_dir = self.output_dir / final_dir_name
        self.state_root = self.output_dir / "training_state"
        self.fingerprint: dict[str, Any] | None = None  # what a saved state depends on; set by the recipe

    # ---- pretrained weights -------------------------------------------------------------------
    def pretrained_state_dict(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The checkpoint_dir weights (and adapter_dir's) under our module names (empty when training from scratch)."""
        if self.checkpoint_dir is None:
            return {}
        from qwenvl_data.models import load_hf_model

        base = load_hf_model(self.checkpoint_dir, dtype=dtype)
        state_dict = base.state_dict()
        if self.adapter_dir is not None:
            adapter = self._read_adapter(base)
            for module, (lora_a, lora_b, magnitude) in adapter.lora.items():
                state_dict.update({f"{module}.lora_a.weight": lora_a, f"{module}.lora_b.weight": lora_b})
                if magnitude is not None:
                    state_dict[f"{module}.magnitude"] = magnitude
            state_dict.update(adapter.full_weights)
        return {k: v.to(dtype) for k, v in state_dict.items()}

    def _read_adapter(self, base: nn.Module):
        from qwenvl_data.models import family_of_model, read_peft_adapter

        return read_peft_adapter(self.adapter_dir, tie_word_embeddings=isinstance(base.decoder.output, TiedLinear),
                                 key_map=family_of_model(base).weight_key_map)  # fmt: skip

    def load_pretrained(self, model: nn.Module, dtype: torch.dtype, trainable_only_missing: bool = False) -> None:
        """Copy checkpoint_dir's weights into an unsharded model.

        Args:
            model: the freshly built model.
            dtype: dtype to read the weights in.
            trainable_only_missing: True for LoRA models, whose adapter weights are not in the
                checkpoint; any other missing or unexpected key is still an error.

        With `adapter_dir`, its adapter is loaded too (an error names the layers that do not match);
        without, DoRA magnitudes are initialized from the loaded weights (also for a from-scratch model).
        """
        from qwenvl_data.models import (
            initialize_dora_magnitudes,
            load_hf_model,
            load_peft_adapter,
        )

        if self.checkpoint_dir is not None:
            base = load_hf_model(self.checkpoint_dir, dtype=dtype)
            missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
            if trainable_only_missing:
                missing = [k for k in missing if not _is_adapter_key(k)]
            if missing or unexpected:
                raise ValueError(
                    f"checkpoint {self.checkpoint_dir} does not match the configured model: "
                    f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                    f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
                )
            if self.adapter_dir is not None:
                try:
                    load_peft_adapter(model, self._read_adapter(base))
                except ValueError as error:
                    raise ValueError(f"checkpointer.adapter_dir={str(self.adapter_dir)!r}: {error}") from None
                return
        initialize_dora_magnitudes(model)

    # ---- resumable training state -------------------------------------------------------------
    def due(self, step: int) -> bool:
        return self.save_every_n_steps is not None and step % self.save_every_n_steps == 0

    def _complete_states(self) -> list[Path]:
        """Training states with a completion marker, newest first."""
        if not self.state_root.is_dir():
            return []
        complete = [
            (int(m.group(1)), p)
            for p in self.state_root.iterdir()
            if (m := _STATE_DIR_PATTERN.match(p.name)) and (p / _COMPLETE_MARKER).is_file()
        ]
        return [p for _, p in sorted(complete, reverse=True)]

    def latest_state(self) -> Path | None:
        """The newest complete training state under output_dir, or None (not verified: see ``resumable_state``)."""
        states = self._complete_states()
        return states[0] if states else None

    def resumable_state(self, resume: bool | str) -> Path:
        """The state to resume from, verified against the checksums written at its save (collective: rank 0
        reads the files, every rank gets its answer).

        Args:
            resume: True for the newest intact state under output_dir (a damaged newer one is named on the
                console and passed over), or the path of one state (which must be intact).

        Raises:
            FileNotFoundError: no complete state.
            DamagedStateError: the chosen state, or every state, fails its checksums (naming each file).
        """
        rank, _ = rank_and_world()
        chosen: Path | BaseException | None = None
        if rank == 0:
            try:
                chosen = self._choose_intact(resume)
            except (OSError, ValueError) as error:
                chosen = error
        chosen = _from_rank0(chosen)
        if isinstance(chosen, BaseException):
            raise chosen
        return chosen

    def _choose_intact(self, resume: bool | str) -> Path:
        candidates = self._complete_states() if resume is True else [Path(str(resume))]
        if not candidates:
            raise MissingInputError(
                f"resume_from_checkpoint=true but {self.state_root} holds no complete training state"
            )
        if resume is not True and not (candidates[0] / _COMPLETE_MARKER).is_file():
            raise MissingInputError(f"{candidates[0]} is not a complete training state (no {_COMPLETE_MARKER})")
        damaged = []
        for path in candidates:
            problems = state_problems(path)
            if not problems:
                for earlier in damaged:
                    print(f"training state {earlier} is damaged ({'; '.join(state_problems(earlier))}); "
                          f"resuming from the older intact {path} instead", flush=True)  # fmt: skip
                if "files" not in read_json(path / _COMPLETE_MARKER):
                    print(f"training state {path} was saved without checksums (an older version): not verified",
                          flush=True)  # fmt: skip
                return path
            damaged.append(path)
        listed = "; ".join(f"{p}: {', '.join(state_problems(p))}" for p in damaged)
        raise DamagedStateError(f"no intact training state to resume from ({listed})")

    def saved_fingerprint(self, path: Path) -> dict[str, Any] | None:
        """What the state at ``path`` depends on (see _fingerprint.py); None for states saved before it was kept."""
        return read_json(path / _COMPLETE_MARKER).get("depends_on")

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

        The state is written under a ``.partial`` name, which a failed save removes; the completion marker
        holds every file's size and sha256 (checked before the state is used) and ``fingerprint`` (what the
        state depends on).

        Raises:
            NonFiniteWeightsError: a trained parameter or optimizer state holds NaN/inf (named); nothing saved.
            OSError: a failed write, naming the directory and the space needed.
        """
        rank, world = rank_and_world()
        final = self.state_root / f"step_{step:07d}"
        partial = self.state_root / f".step_{step:07d}.partial"
        model_sd, optim_sd = get_state_dict(model, optimizer, options=_TRAINED_ONLY)
        check_finite_on_every_rank({"model": model_sd, "optimizer": optim_sd}, f"training state {final} (not saved)")
        if rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        barrier()
        try:
            with _single_process_dcp_is_intended(), naming_failed_writes(partial, _nbytes(model_sd, optim_sd)):
                dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=partial / "model_optimizer")
                torch.save({**trainer_state, "rng": capture_rng_state()}, partial / f"trainer_rank{rank}.pt")
            barrier()
            if rank == 0:
                with naming_failed_writes(partial, 2**20):
                    marker = {"step": step, "world_size": world, "files": file_digests(partial),
                              "depends_on": self.fingerprint}  # fmt: skip
                    (partial / _COMPLETE_MARKER).write_text(json.dumps(marker))
                _publish_dir(partial, final)
                self._prune()
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)  # a failed save leaves nothing half-written behind
            raise
        barrier()
        return final

    def load_state(self, path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Restore model, optimizer and RNGs from a saved state; returns this rank's trainer_state.

        Raises:
            FileNotFoundError: ``path`` is not a complete state.
            ValueError: the state was saved by another number of ranks, or a file cannot be read (named).
            NonFiniteWeightsError: a loaded tensor holds NaN/inf (named with the state).
        """
        path = Path(path)
        marker = path / _COMPLETE_MARKER
        if not marker.is_file():
            raise FileNotFoundError(f"{path} is not a complete training state (no {_COMPLETE_MARKER})")
        rank, world = rank_and_world()
        saved_world = read_json(marker)["world_size"]
        if saved_world != world:
            raise ValueError(
                f"{path} was saved by {saved_world} rank(s); resuming needs the same number, got {world} "
                "(the data-loader position is per rank)"
            )
        model_sd, optim_sd = get_state_dict(model, optimizer, options=_TRAINED_ONLY)
        state = {"model": model_sd, "optimizer": optim_sd}
        try:
            with _single_process_dcp_is_intended():
                dcp.load(state, checkpoint_id=path / "model_optimizer")
        except (CheckpointException, OSError, RuntimeError, ValueError) as error:
            raise ValueError(f"{path / 'model_optimizer'}: cannot be read: "
                             f"{str(_first_failure(error)).splitlines()[0]}") from error  # fmt: skip
        check_finite_on_every_rank(state, f"training state {path} (loaded)")
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                       options=StateDictOptions(ignore_frozen_params=True, strict=False))  # fmt: skip
        trainer_file = path / f"trainer_rank{rank}.pt"
        try:
            trainer_state = torch.load(trainer_file, weights_only=False)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
            raise ValueError(f"{trainer_file}: cannot be read: {error}") from error
        restore_rng_state(trainer_state.pop("rng"))
        return trainer_state

    def _prune(self) -> None:
        """Keep the newest ``keep_last_n`` states; delete the ``.partial`` directories killed saves left (no
        other save runs now: this one is done, and the output_dir lock keeps other runs out)."""
        for leftover in self.state_root.glob(".step_*.partial"):
            shutil.rmtree(leftover, ignore_errors=True)
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
        """Write weights as a complete HF directory, atomically; collective.

        Args:
            model: the trained model (sharded or not).
            build_plain_model: builds the same architecture unsharded and without adapters; used on
                rank 0 (on the meta device, then filled) when `model` is sharded or `state_dict` is given.
            out_dir: defaults to the final directory.
            state_dict: weights to save instead of `model`'s (e.g. LoRA-merged weights).

        The directory is complete (tokenizer, chat template, preprocessor and generation configs from
        `transform` and `checkpoint_dir`, see `save_hf_model`); a failed write leaves no `.partial` behind.

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
            with atomic_directory(out_dir) as partial, naming_failed_writes(partial, _nbytes(to_save.state_dict())):
                save_hf_model(to_save, partial, transform=self.transform, source_dir=self.checkpoint_dir)
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
