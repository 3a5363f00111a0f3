"""LoRA Qwen2.5-VL: what trains under torchtune's peft conventions (exports: test_models_peft.py)."""

import pytest
import torch
from support.models_reference import save_random_hf_model
from torchtune.modules.peft import get_adapter_params, set_trainable_params
from support.vl_samples import vl_sample

from qwenvl_data.collate import padded_collate_qwen2_5_vl
from qwenvl_data.models import load_hf_model, lora_qwen2_5_vl_tiny


def trainable(model: torch.nn.Module) -> set[str]:
    set_trainable_params(model, get_adapter_params(model))
    return {name for name, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("base")
    save_random_hf_model(model_dir, seed=5)
    return model_dir


@pytest.fixture(scope="module")
def batch():
    return padded_collate_qwen2_5_vl([vl_sample((("image", 12, 8),), seed=3), vl_sample(seed=4)])


def test_adapters_and_merger_train_while_the_rest_is_frozen():
    names = trainable(lora_qwen2_5_vl_tiny(["q_proj", "v_proj"], lora_rank=4, lora_alpha=8))
    expected_adapters = {
        f"decoder.layers.{i}.attn.{proj}.lora_{ab}.weight"
        for i in range(2)
        for proj in ("q_proj", "v_proj")
        for ab in "ab"
    }
    merger = {f"visual.merger.{n}" for n in ("norm.scale", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")}
    assert names == expected_adapters | merger


def test_vision_tower_can_train_in_full_and_mlp_adapters_are_added():
    model = lora_qwen2_5_vl_tiny(
        ["output_proj"], apply_lora_to_mlp=True, lora_rank=2, lora_alpha=4, train_vision_tower=True
    )
    names = trainable(model)
    assert {n for n, _ in model.visual.named_parameters()} <= {n.removeprefix("visual.") for n in names}
    assert "decoder.layers.0.mlp.w2.lora_b.weight" in names
    assert all(n.startswith("visual.") or ".lora_" in n for n in names)  # base LM weights stay frozen


def test_lora_on_a_tied_output_is_refused():
    with pytest.raises(ValueError, match="tied word embeddings"):
        lora_qwen2_5_vl_tiny(["q_proj"], apply_lora_to_output=True, lora_rank=2, lora_alpha=4)
    with pytest.raises(ValueError, match="unknown lora_attn_modules"):
        lora_qwen2_5_vl_tiny(["qkv"], lora_rank=2, lora_alpha=4)


def test_fresh_adapters_leave_the_loaded_base_model_unchanged(base_dir, batch):
    lora = load_hf_model(base_dir, lora_attn_modules=["q_proj", "k_proj"], lora_rank=4, lora_alpha=8).eval()
    base = load_hf_model(base_dir).eval()
    with torch.no_grad():
        assert torch.equal(lora(**batch), base(**batch))
