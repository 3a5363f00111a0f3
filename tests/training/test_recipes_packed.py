"""`tune run` with dataset.packed=true, periodic validation, intermediate HF directories, truncation from the config."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qwenvl_data.errors import SampleTooLongError
from qwenvl_data.training._config import build
from qwenvl_data.training._periodic import hf_step_dirs, prune_hf_step_dirs
from support.families import FAMILIES
from support.recipes_support import (
    PYTHON,
    TINY_OVERRIDES,
    as_cli,
    load_config,
    load_recipe,
    metrics,
    refusal_line,
    run_command,
)

# 2 epochs of 2 steps of 2 packed rows of 128 tokens (about 3 synthetic samples a row); the resumed run stops at
# the end of epoch 0, so the packer's stream must carry on into epoch 1 from the saved state.
PACKED_OVERRIDES = {
    **TINY_OVERRIDES,
    "dataset.packed": True,
    "dataset.packed_buffer_size": 8,
    "tokenizer.max_seq_len": 128,
    "batch_size": 2,
    "epochs": 2,
    "max_steps_per_epoch": 2,
    "eval_dataset.num_samples": 4,
    "eval_every_n_steps": 2,
    "save_hf_every_n_steps": 1,
    "keep_last_n_hf": 2,
}


def _tune_run(overrides: dict, config: str = "tiny_synthetic") -> None:
    args = ["tune", "run", "recipes/full_finetune_single_device.py", "--config", f"configs/{config}.yaml"]
    run_command([PYTHON, "-m", "torchtune._cli.tune", *args[1:], *as_cli(overrides)], timeout=600)


def _straight_and_resumed(root: Path, config: str) -> tuple[Path, Path]:
    """A packed run of ``config`` straight through, and the same run stopped after step 2 and resumed."""
    # All three runs in processes alike (run_command's one thread): float sums split by thread count (ATen's
    # reductions; MKL's sgemm on Intel CPUs, even under MKL_CBWR=AVX2) differ in the last bits, so a run in
    # this process (one thread per core) is not the same computation as the resumed one (README "Resuming").
    _tune_run({**PACKED_OVERRIDES, "output_dir": str(root / "straight")}, config)
    _tune_run({**PACKED_OVERRIDES, "output_dir": str(root / "resumed"), "stop_after_step": 2}, config)
    _tune_run({**PACKED_OVERRIDES, "output_dir": str(root / "resumed"), "resume_from_checkpoint": True}, config)
    return root / "straight", root / "resumed"


@pytest.fixture(scope="module")
def packed_runs(tmp_path_factory):
    return _straight_and_resumed(tmp_path_factory.mktemp("packed"), "tiny_synthetic")


@pytest.fixture(scope="module", params=FAMILIES)
def family_packed_runs(request, tmp_path_factory):
    """``packed_runs`` of each family's tiny config (the default's runs are Qwen2.5-VL's, made once)."""
    family = FAMILIES[request.param]
    if family.tiny_config == "tiny_synthetic":
        return request.getfixturevalue("packed_runs")
    return _straight_and_resumed(tmp_path_factory.mktemp(f"packed_{family.model_type}"), family.tiny_config)


def test_packed_tune_run_resumes_to_bit_identical_weights_and_losses(family_packed_runs):
    straight, resumed = family_packed_runs
    assert metrics(resumed)["history"]["loss"] == metrics(straight)["history"]["loss"]
    assert metrics(straight)["history"]["steps"] == list(range(1, 5))
    expected = load_file(straight / "hf_model" / "model.safetensors")
    actual = load_file(resumed / "hf_model" / "model.safetensors")
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def test_eval_every_n_steps_writes_validation_loss_and_accuracy_to_metrics(packed_runs):
    straight, resumed = packed_runs
    evals = metrics(straight)["history"]["eval"]
    assert [e["step"] for e in evals] == [2, 4]
    assert all(0.0 <= e["accuracy"] <= 1.0 and e["loss"] > 0 for e in evals)
    assert evals[0]["loss"] > evals[-1]["loss"]  # it learns something in 4 steps
    # The step-4 validation saw the final weights: the same loss as the evaluation after training.
    assert evals[-1]["loss"] == pytest.approx(metrics(straight)["history"]["eval_after"]["loss"], rel=1e-6)
    assert metrics(resumed)["history"]["eval"] == evals  # kept across the resume
    assert (straight / "loss.png").stat().st_size > 0


def test_save_hf_every_n_steps_keeps_the_last_n_complete_directories(packed_runs):
    straight, resumed = packed_runs
    for run in (straight, resumed):
        final = run / "hf_model"
        assert [p.name for p in hf_step_dirs(final)] == ["step_3", "step_4"]
        assert not list(final.glob("*.partial"))
        for step_dir in hf_step_dirs(final):
            assert (step_dir / "config.json").is_file()
    # Step 4 is the last step: its directory holds the final weights.
    final_weights = load_file(straight / "hf_model" / "model.safetensors")
    step_weights = load_file(straight / "hf_model" / "step_4" / "model.safetensors")
    assert all(torch.equal(final_weights[key], step_weights[key]) for key in final_weights)


def test_prune_keeps_the_newest_steps_by_number_not_by_name(tmp_path):
    for step in (2, 10, 4, 8):
        (tmp_path / f"step_{step}").mkdir()
    (tmp_path / "step_12.partial").mkdir()
    deleted = prune_hf_step_dirs(tmp_path, keep=2)
    assert [p.name for p in deleted] == ["step_2", "step_4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_10", "step_12.partial", "step_8"]


def test_packed_run_without_max_steps_per_epoch_is_a_clear_error(tmp_path, capsys):
    recipe = load_recipe("full_finetune_single_device")
    cfg = load_config("tiny_synthetic", {**PACKED_OVERRIDES, "output_dir": str(tmp_path), "max_steps_per_epoch": None})
    last_line = refusal_line(capsys, lambda: recipe.run_recipe(recipe.FullFinetuneRecipeSingleDevice, cfg))
    assert last_line.startswith("ConfigError: dataset.packed=true needs max_steps_per_epoch"), last_line


def test_truncate_text_is_reachable_from_the_config_and_never_cuts_an_image():
    # the first sample has 33 tokens, its answer at 30-31: 31 keeps the answer's first token and cuts the rest
    cut = load_config("tiny_synthetic", {**TINY_OVERRIDES, "tokenizer.max_seq_len": 31,
                                         "tokenizer.truncation": "truncate_text"})  # fmt: skip
    dataset = build(cut, "dataset", build(cut, "tokenizer"))
    sample = dataset[0]
    assert len(sample["tokens"]) == 31 and len(sample["labels"]) == 31
    assert sample["tokens"].count(151655) * 4 == sample["pixel_values"].shape[0]  # the image is whole
    strict = load_config("tiny_synthetic", {**TINY_OVERRIDES, "tokenizer.max_seq_len": 31})
    with pytest.raises(SampleTooLongError):
        build(strict, "dataset", build(strict, "tokenizer"))[0]
    into_image = load_config("tiny_synthetic", {**TINY_OVERRIDES, "tokenizer.max_seq_len": 14,
                                                "tokenizer.truncation": "truncate_text"})  # fmt: skip
    with pytest.raises(SampleTooLongError, match="image/video span"):
        build(into_image, "dataset", build(into_image, "tokenizer"))[0]
