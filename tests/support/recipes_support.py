"""Shared by the recipe tests: tiny-run overrides, loading recipe files by path, reading results."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from qwenvl_data.training import NextTokenCrossEntropy, TrainingCheckpointer
from qwenvl_data.training._distributed import rank_and_world

REPO = Path(__file__).resolve().parents[2]

# A few-second version of configs/tiny_synthetic.yaml: small images, few samples, few steps.
TINY_OVERRIDES = {
    "dataset.num_samples": 64,
    "dataset.image_size": [56, 56],
    "eval_dataset.num_samples": 8,
    "eval_dataset.image_size": [56, 56],
    "eval_batch_size": 8,
    "batch_size": 4,
    "max_steps_per_epoch": 4,
    "checkpointer.save_every_n_steps": 2,
    "metric_logger._component_": "torchtune.training.metric_logging.DiskLogger",
}


def as_cli(overrides: dict) -> list[str]:
    """key=value arguments as `tune run` takes them (lists in YAML flow style)."""
    return [f"{key}={json.dumps(value) if isinstance(value, list) else value}" for key, value in overrides.items()]


def refusal_line(capsys: pytest.CaptureFixture, run: Callable[[], object]) -> str:
    """Call ``run`` (a ``run_recipe`` call) expecting a refusal: exit status 1, no traceback; returns the last line
    printed to stderr, the refusal's message."""
    with pytest.raises(SystemExit) as exited:
        run()
    assert exited.value.code == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]


def load_config(name: str, overrides: dict) -> DictConfig:
    """configs/<name>.yaml with dotted-key overrides, as the recipes receive it."""
    cfg = OmegaConf.load(REPO / "configs" / f"{name}.yaml")
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def load_recipe(name: str) -> ModuleType:
    """recipes/<name>.py as a module, by path (the name `recipes` belongs to torchtune's wheel)."""
    spec = importlib.util.spec_from_file_location(f"_recipe_{name}", REPO / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recipe_class(name: str) -> type:
    """The recipe class that recipes/<name>.py defines (the one its recipe_main runs)."""
    module = load_recipe(name)
    return next(v for v in vars(module).values() if isinstance(v, type) and v.__module__ == module.__name__
                and hasattr(v, "setup"))  # fmt: skip


def released_lora_setup(
    checkpoint_dir: Path,
    data_files: Path,
    output_dir: Path,
    config: str = "qwen2_5_vl_3b_lora_single_device",
    **overrides: object,
):
    """The recipe after setup() of a released single-device LoRA config (the 3B unless named) on CPU in fp32 (no
    training; its batches are ready to read, so it is cleaned up only when setup fails: ``num_workers`` is 0,
    nothing runs in the background)."""
    cfg = load_config(config, {
        "checkpoint_dir": str(checkpoint_dir), "dataset.data_files": str(data_files), "output_dir": str(output_dir),
        "device": "cpu", "dtype": "fp32", "optimizer.fused": False, "num_workers": 0,
        "enable_activation_checkpointing": False, "gradient_accumulation_steps": 1, **overrides,
    })  # fmt: skip
    recipe = recipe_class("lora_finetune_single_device")(cfg)
    try:
        recipe.setup(cfg)
    except BaseException:
        recipe.cleanup()
        raise
    return recipe


SUBPROCESS_THREADS = 1  # intra-op threads of each process run_command starts


def run_command(args: list[str], timeout: float, returncode: int | None = 0) -> subprocess.CompletedProcess:
    """Run from the repo root, in a process group of its own, with this tests folder importable (``support``);
    a timeout, because a failed rank leaves the other one waiting. ``returncode``: the exit status expected
    (None: any but 0)."""
    pythonpath = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(REPO / "tests")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": str(SUBPROCESS_THREADS), "PYTHONUNBUFFERED": "1", "PYTHONPATH": pythonpath}
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
                            start_new_session=True)  # fmt: skip
    expected = result.returncode != 0 if returncode is None else result.returncode == returncode
    assert expected, f"{' '.join(args)} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def metrics(output_dir: Path) -> dict:
    return json.loads((output_dir / "metrics.json").read_text())


PYTHON = sys.executable


@contextmanager
def threads_of_run_command() -> Iterator[None]:
    """Within the block this process computes as run_command's processes do: float sums are split by thread
    count (ATen's reductions, MKL's sgemm on Intel CPUs), so a bit-exact comparison needs the same count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(SUBPROCESS_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class SignalingLoss(NextTokenCrossEntropy):
    """The recipes' loss, sending ``signum`` during its ``signal_at_call``-th training call (one call per
    micro-batch): a preemption (SIGTERM) or a Ctrl-C (SIGINT) arriving in the middle of a step, with its
    other micro-batches still to read. ``group``: to every process of this process group, as SLURM and a
    terminal do (DataLoader workers included); else to this process only. ``rank``: only that rank sends."""

    def __init__(self, signum: int, signal_at_call: int, group: bool = False, rank: int | None = None) -> None:
        super().__init__()
        self.signum, self.signal_at_call, self.group, self.rank, self.calls = signum, signal_at_call, group, rank, 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():  # training, not validation
            self.calls += 1
            if self.calls == self.signal_at_call and self.rank in (None, rank_and_world()[0]):
                os.killpg(os.getpgrp(), self.signum) if self.group else os.kill(os.getpid(), self.signum)
        return super().forward(*args, **kwargs)


class _SignalWhenPickled:
    """Sends ``signum`` ``times`` times to this process while torch.save pickles it (loads back as 0)."""

    def __init__(self, signum: int, times: int) -> None:
        self.signum, self.times = signum, times

    def __reduce__(self) -> tuple:
        for _ in range(self.times):
            os.kill(os.getpid(), self.signum)
        return (int, (0,))


class SignalDuringSave(TrainingCheckpointer):
    """A checkpointer that gets SIGINT twice (Ctrl-C, Ctrl-C) in the middle of writing the state of step
    ``signal_at_step``: after the model and optimizer files, while the trainer state is being written."""

    def __init__(self, *, signal_at_step: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.signal_at_step = signal_at_step

    def save_state(self, step: int, model: Any, optimizer: Any, trainer_state: dict) -> Path:
        if step == self.signal_at_step:
            trainer_state = {**trainer_state, "signals": _SignalWhenPickled(signal.SIGINT, times=2)}
        return super().save_state(step, model, optimizer, trainer_state)
