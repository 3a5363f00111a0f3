"""Every weight file the stack reads or writes is finite, or the run stops naming the tensor and the file: a NaN
base, a NaN adapter, a NaN training state, NaN trained weights; and a run that skipped non-finite steps says
how many in its last line."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from qwenvl_data._finite import NonFiniteWeightsError
from qwenvl_data.export import main as export_main
from qwenvl_data.models import load_hf_model, lora_qwen2_5_vl_tiny, qwen2_5_vl_tiny, save_hf_model
from qwenvl_data.training import TrainingCheckpointer
from qwenvl_data.training._lora import save_adapter, train_adapters_only
from support.recipes_support import TINY_OVERRIDES, load_config, load_recipe, metrics

NAN_NAME = "model.layers.0.mlp.down_proj.weight"


def _poison(weights_file, name: str = NAN_NAME) -> None:
    """One NaN in one tensor, written by safetensors itself (our writer would refuse it)."""
    tensors = load_file(weights_file)
    tensors[name][0, 0] = float("nan")
    save_file(tensors, weights_file, metadata={"format": "pt"})


@pytest.fixture(scope="module")
def nan_base(tmp_path_factory):
    model_dir = save_hf_model(qwen2_5_vl_tiny(), tmp_path_factory.mktemp("nan_base") / "model")
    _poison(model_dir / "model.safetensors")
    return model_dir


def test_a_lora_run_on_a_base_with_one_nan_weight_stops_at_load_naming_it(nan_base, tmp_path):
    recipe = load_recipe("lora_finetune_single_device")
    overrides = {**TINY_OVERRIDES, "output_dir": str(tmp_path / "out"), "checkpointer.checkpoint_dir": str(nan_base),
                 "init_std": None, "on_nonfinite_loss": "skip_step"}  # fmt: skip
    with pytest.raises(NonFiniteWeightsError, match=rf"{nan_base / 'model.safetensors'} \(read\): tensor\(s\) "
                                                    rf"{NAN_NAME} hold NaN/inf"):  # fmt: skip
        recipe.run_recipe(recipe.LoRAFinetuneRecipeSingleDevice, load_config("tiny_synthetic_lora", overrides))
    assert not (tmp_path / "out" / "hf_model").exists() and not (tmp_path / "out" / "adapter").exists()


def test_export_refuses_a_nan_adapter_naming_it_and_writes_nothing(tmp_path, capsys):
    base = save_hf_model(qwen2_5_vl_tiny(), tmp_path / "base")
    model = load_hf_model(base, lora_attn_modules=["q_proj"], lora_rank=2, lora_alpha=4)
    train_adapters_only(model)
    save_adapter(model, model.state_dict(), tmp_path / "adapter", base_model=str(base))
    adapter_file = tmp_path / "adapter" / "adapter_model.safetensors"
    lora_b = next(k for k in load_file(adapter_file) if "lora_B" in k)
    _poison(adapter_file, lora_b)
    out = tmp_path / "merged"
    assert export_main(["--checkpoint-dir", str(base), "--adapter-dir", str(tmp_path / "adapter"),
                        "--output-dir", str(out)]) == 1  # fmt: skip
    assert f"export failed: {adapter_file} (read): tensor(s) {lora_b} hold NaN/inf" in capsys.readouterr().err
    assert not out.exists() and not out.with_name("merged.partial").exists()


def test_nan_trained_weights_are_never_written_as_hf_model_or_adapter(tmp_path):
    model = lora_qwen2_5_vl_tiny(["q_proj"], lora_rank=2, lora_alpha=4)
    train_adapters_only(model)
    with torch.no_grad():
        model.decoder.layers[1].attn.q_proj.lora_b.weight[0, 0] = float("inf")
    checkpointer = TrainingCheckpointer(output_dir=str(tmp_path))
    refusal = r"hf_model.partial/model.safetensors \(not written\): tensor\(s\) model.layers.1.self_attn.q_proj.weight"
    with pytest.raises(NonFiniteWeightsError, match=refusal):
        checkpointer.save_hf(model, lambda: None)
    with pytest.raises(NonFiniteWeightsError, match=r"adapter_model.safetensors \(not written\): tensor\(s\) "
                                                    r".*layers.1.self_attn.q_proj.lora_B.weight hold"):  # fmt: skip
        save_adapter(model, model.state_dict(), tmp_path / "adapter", base_model=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no directory, no .partial


def _linear_state(tmp_path, **checkpointer_args):
    checkpointer = TrainingCheckpointer(output_dir=str(tmp_path), **checkpointer_args)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    return checkpointer, model, optimizer


def test_a_nan_training_state_is_refused_at_save_and_named_as_nan_at_load(tmp_path, monkeypatch):
    checkpointer, model, optimizer = _linear_state(tmp_path)
    with torch.no_grad():
        model.bias[1] = float("nan")
    refusal = r"step_0000001 \(not saved\): 1 tensor\(s\) hold NaN/inf \(model.bias\)"
    with pytest.raises(NonFiniteWeightsError, match=refusal):
        checkpointer.save_state(1, model, optimizer, {})
    assert not (tmp_path / "training_state").exists() or not any((tmp_path / "training_state").iterdir())
    # a state written by an older version (no check at save) is named as non-finite when loaded
    monkeypatch.setattr("qwenvl_data.training._checkpoint.check_finite_on_every_rank", lambda *args: None)
    saved = checkpointer.save_state(1, model, optimizer, {})
    monkeypatch.undo()
    fresh = torch.nn.Linear(3, 2)
    with pytest.raises(NonFiniteWeightsError, match=rf"training state {saved} \(loaded\): .*model.bias"):
        checkpointer.load_state(saved, fresh, torch.optim.AdamW(fresh.parameters()))


def test_skipped_nonfinite_steps_are_counted_in_the_last_line(tmp_path, capsys):
    out = tmp_path / "out"
    overrides = {**TINY_OVERRIDES, "optimizer.lr": 1e6, "max_steps_per_epoch": 4, "eval_dataset.num_samples": 2,
                 "output_dir": str(out), "on_nonfinite_loss": "skip_step"}  # fmt: skip
    recipe = load_recipe("full_finetune_single_device")
    recipe.run_recipe(recipe.FullFinetuneRecipeSingleDevice, load_config("tiny_synthetic", overrides))
    skipped = metrics(out)["history"]["nonfinite_steps_skipped"]
    assert skipped
    summary = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("trained 4 steps"))
    assert f"trained 4 steps ({len(skipped)} of them skipped for a non-finite loss or gradient" in summary
    assert ", ".join(map(str, skipped)) in summary
    assert all(torch.isfinite(w).all() for w in load_file(out / "hf_model" / "model.safetensors").values())
    assert json.loads((out / "metrics.json").read_text())["nonfinite_steps_skipped"] == len(skipped)
