"""Checkpoint and resume: a run stopped after step k and resumed equals an uninterrupted run, bit for bit."""

import json

import pytest
import torch
from safetensors.torch import load_file

from qwenvl_data.datasets import synthetic_vqa_dataset
from qwenvl_data.training import TrainingCheckpointer
from qwenvl_data.training._data import build_dataloader
from support.recipes_support import TINY_OVERRIDES, load_config, load_recipe, metrics

# 2 epochs of 3 steps: the stop at step 4 is mid-epoch, after an epoch boundary and a periodic save.
RESUME_OVERRIDES = {**TINY_OVERRIDES, "epochs": 2, "max_steps_per_epoch": 3, "eval_dataset.num_samples": 4}


def _run(overrides: dict) -> None:
    recipe = load_recipe("full_finetune_single_device")
    recipe.run_recipe(recipe.FullFinetuneRecipeSingleDevice, load_config("tiny_synthetic", overrides))


@pytest.fixture(scope="module")
def uninterrupted_and_resumed(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    _run({**RESUME_OVERRIDES, "output_dir": str(root / "straight")})
    _run({**RESUME_OVERRIDES, "output_dir": str(root / "resumed"), "stop_after_step": 4})
    stopped_states = sorted(p.name for p in (root / "resumed" / "training_state").iterdir())
    _run({**RESUME_OVERRIDES, "output_dir": str(root / "resumed"), "resume_from_checkpoint": True})
    return root / "straight", root / "resumed", stopped_states


def test_stopped_run_leaves_only_a_complete_state_and_no_final_weights(uninterrupted_and_resumed):
    _, _, stopped_states = uninterrupted_and_resumed
    assert stopped_states == ["step_0000004"]  # keep_last_n=1; never a .partial


def test_resumed_run_reaches_bit_identical_weights(uninterrupted_and_resumed):
    straight, resumed, _ = uninterrupted_and_resumed
    expected = load_file(straight / "hf_model" / "model.safetensors")
    actual = load_file(resumed / "hf_model" / "model.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def test_resumed_run_has_the_same_loss_at_every_step(uninterrupted_and_resumed):
    straight, resumed, _ = uninterrupted_and_resumed
    assert metrics(resumed)["history"]["loss"] == metrics(straight)["history"]["loss"]
    assert metrics(resumed)["history"]["steps"] == list(range(1, 7))


def test_dataloader_resume_sees_every_sample_once():
    """Stop a loader mid-epoch, restore it in a new loader: the ids continue exactly where they stopped."""
    dataset = synthetic_vqa_dataset(None, num_samples=40, seed=3, image_size=28)

    def ids(batch):
        return [sample["id"] for sample in batch]

    def loader():
        data = build_dataloader(dataset, ids, batch_size=4, shuffle=True, seed=7)
        data.sampler.set_epoch(1)
        return data

    straight = [sample_id for batch in loader() for sample_id in batch]
    first = loader()
    batches = iter(first)
    head = [sample_id for _ in range(3) for sample_id in next(batches)]
    state = first.state_dict()
    second = loader()
    second.load_state_dict(state)
    tail = [sample_id for batch in second for sample_id in batch]
    assert head + tail == straight
    assert len(set(straight)) == 40


def test_latest_state_ignores_half_written_saves(tmp_path):
    """A save killed before its rename leaves a .partial directory that resume must not pick."""
    checkpointer = TrainingCheckpointer(output_dir=str(tmp_path))
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    saved = checkpointer.save_state(5, model, optimizer, {"global_step": 5})
    (tmp_path / "training_state" / ".step_0000009.partial" / "model_optimizer").mkdir(parents=True)
    assert checkpointer.latest_state() == saved
    assert json.loads((saved / "complete.json").read_text())["step"] == 5


def test_saving_the_same_step_again_replaces_it_atomically(tmp_path):
    checkpointer = TrainingCheckpointer(output_dir=str(tmp_path), keep_last_n=2)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    checkpointer.save_state(1, model, optimizer, {"marker": "old"})
    with torch.no_grad():
        model.weight.add_(1.0)
    checkpointer.save_state(1, model, optimizer, {"marker": "new"})
    restored = torch.nn.Linear(3, 2)
    state = checkpointer.load_state(checkpointer.latest_state(), restored, torch.optim.SGD(restored.parameters(), lr=0.1))
    assert state["marker"] == "new"
    assert torch.equal(restored.weight, model.weight)
    assert sorted(p.name for p in (tmp_path / "training_state").iterdir()) == ["step_0000001"]
