"""Shared by the recipe tests: tiny-run overrides, loading recipe files by path, reading results."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from omegaconf import DictConfig, OmegaConf

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


def released_lora_setup(checkpoint_dir: Path, data_files: Path, output_dir: Path, **overrides: object):
    """The recipe after setup() of the released 3B LoRA config on CPU in fp32 (no training)."""
    cfg = load_config("qwen2_5_vl_3b_lora_single_device", {
        "checkpoint_dir": str(checkpoint_dir), "dataset.data_files": str(data_files), "output_dir": str(output_dir),
        "device": "cpu", "dtype": "fp32", "optimizer.fused": False, "num_workers": 0,
        "enable_activation_checkpointing": False, "gradient_accumulation_steps": 1, **overrides,
    })  # fmt: skip
    recipe = recipe_class("lora_finetune_single_device")(cfg)
    try:
        recipe.setup(cfg)
    finally:
        recipe.cleanup()
    return recipe


def run_command(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run from the repo root; a timeout, because a failed rank leaves the other one waiting."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def metrics(output_dir: Path) -> dict:
    return json.loads((output_dir / "metrics.json").read_text())


PYTHON = sys.executable
