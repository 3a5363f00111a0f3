"""SIGTERM (preemption) and SIGINT (Ctrl-C): the run finishes its step, saves, says how to resume, exits 128 + N
without a traceback; the resumed run ends with the weights of a run that was never stopped."""

import signal

import pytest
import torch
from safetensors.torch import load_file

from qwenvl_data.training import TrainingCheckpointer
from support.recipes_support import TINY_OVERRIDES, as_cli, load_config, load_recipe, metrics, run_command

# 2 epochs of 3 steps, states every 2 steps (as test_recipes_resume.py); 3 micro-batches a step, so that a
# signal during a step's first one leaves more to read than the DataLoader workers have read ahead.
OVERRIDES = {**TINY_OVERRIDES, "epochs": 2, "max_steps_per_epoch": 3, "eval_dataset.num_samples": 4,
             "gradient_accumulation_steps": 3}  # fmt: skip
SINGLE = ["tune", "run", "recipes/full_finetune_single_device.py", "--config", "configs/tiny_synthetic.yaml"]
TWO_RANKS = ["tune", "run", "--nproc_per_node", "2", "recipes/full_finetune_distributed.py",
             "--config", "configs/tiny_synthetic.yaml"]  # fmt: skip
SIGNALING_LOSS = "support.recipes_support.SignalingLoss"


def _run_in_process(overrides: dict) -> None:
    recipe = load_recipe("full_finetune_single_device")
    recipe.run_recipe(recipe.FullFinetuneRecipeSingleDevice, load_config("tiny_synthetic", overrides))


def _assert_same_weights(expected_dir, actual_dir) -> None:
    expected = load_file(expected_dir / "hf_model" / "model.safetensors")
    actual = load_file(actual_dir / "hf_model" / "model.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def _partial_dirs(output_dir) -> list[str]:
    return [str(p) for p in output_dir.rglob("*.partial")]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("signals") / "straight"
    _run_in_process({**OVERRIDES, "output_dir": str(out)})
    return out


def test_sigterm_to_every_process_stops_after_the_step_and_the_resumed_run_has_the_same_weights(straight, tmp_path):
    """SLURM's preemption: SIGTERM to the whole process group (DataLoader workers too) in the middle of step 4
    (its first micro-batch: the workers must still serve the other two)."""
    out = tmp_path / "preempted"
    stopped = {**OVERRIDES, "output_dir": str(out), "num_workers": 2, "loss._component_": SIGNALING_LOSS,
               "loss.signum": int(signal.SIGTERM), "loss.signal_at_call": 3 * 3 + 1, "loss.group": True}  # fmt: skip
    result = run_command([*SINGLE, *as_cli(stopped)], timeout=300, returncode=128 + signal.SIGTERM)
    state = out / "training_state" / "step_0000004"
    assert f"stopped by SIGTERM after step 4 (resumable state of step 4: {state})" in result.stdout
    assert f"resume_from_checkpoint=true (output_dir={out})" in result.stdout
    assert "Traceback" not in result.stderr and "Error" not in result.stderr
    assert TrainingCheckpointer(output_dir=str(out)).latest_state() == state
    assert not (out / "hf_model").exists() and not _partial_dirs(out)

    # the signalling loss is the test's, not the run's: the resume says so (resume_overrides)
    _run_in_process({**OVERRIDES, "output_dir": str(out), "num_workers": 2, "resume_from_checkpoint": True,
                     "resume_overrides": ["loss"]})  # fmt: skip
    _assert_same_weights(straight, out)
    assert metrics(out)["history"]["loss"] == metrics(straight)["history"]["loss"]


def test_ctrl_c_twice_during_a_save_completes_it_and_leaves_no_partial_directory(straight, tmp_path):
    """Two SIGINTs while the state of step 2 is being written: it is written whole, then the run stops."""
    out = tmp_path / "interrupted"
    stopped = {**OVERRIDES, "output_dir": str(out), "checkpointer._component_": "support.recipes_support.SignalDuringSave",
               "checkpointer.signal_at_step": 2}  # fmt: skip
    result = run_command([*SINGLE, *as_cli(stopped)], timeout=300, returncode=128 + signal.SIGINT)
    assert "stopped by SIGINT after step 2" in result.stdout
    assert "Traceback" not in result.stderr and "OSError" not in result.stderr
    assert not _partial_dirs(out)
    assert TrainingCheckpointer(output_dir=str(out)).latest_state() == out / "training_state" / "step_0000002"

    _run_in_process({**OVERRIDES, "output_dir": str(out), "resume_from_checkpoint": True,
                     "resume_overrides": ["checkpointer"]})  # fmt: skip
    _assert_same_weights(straight, out)


def test_sigterm_on_one_rank_stops_both_at_the_same_step_and_resumes_to_the_same_weights(tmp_path):
    """2 ranks (gloo): only rank 0 gets SIGTERM (during step 2's first micro-batch); rank 1 stops with it; the
    resumed run equals an uninterrupted 2-rank run bit for bit."""
    two_ranks = {**OVERRIDES, "batch_size": 2, "epochs": 1}
    run_command([*TWO_RANKS, *as_cli({**two_ranks, "output_dir": str(tmp_path / "straight")})], timeout=420)
    out = tmp_path / "preempted"
    stopped = {**two_ranks, "output_dir": str(out), "loss._component_": SIGNALING_LOSS,
               "loss.signum": int(signal.SIGTERM), "loss.signal_at_call": 3 + 1, "loss.rank": 0}  # fmt: skip
    result = run_command([*TWO_RANKS, *as_cli(stopped)], timeout=420, returncode=None)
    assert "stopped by SIGTERM after step 2" in result.stdout
    state = TrainingCheckpointer(output_dir=str(out)).latest_state()
    assert state == out / "training_state" / "step_0000002"
    assert sorted(p.name for p in state.glob("trainer_rank*.pt")) == ["trainer_rank0.pt", "trainer_rank1.pt"]

    resumed = {**two_ranks, "output_dir": str(out), "resume_from_checkpoint": True, "resume_overrides": ["loss"]}
    run_command([*TWO_RANKS, *as_cli(resumed)], timeout=420)
    _assert_same_weights(tmp_path / "straight", out)
    assert metrics(out)["history"]["loss"] == metrics(tmp_path / "straight")["history"]["loss"]
