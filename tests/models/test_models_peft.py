"""Adapters in PEFT's format: transformers + peft load ours and compute our trained model's logits, PEFT's
load into our LoRA model, and every export (merged LoRA, DoRA on biased and bias-free layers, QLoRA, the
`python -m qwenvl_data.export` command) equals the module that was trained."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support.families import FAMILIES
from support.models_reference import hf_forward, save_random_hf_model
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import Qwen2_5_VLForConditionalGeneration
from support.vl_samples import vl_sample

from qwenvl_data.collate import padded_collate_qwen2_5_vl
from qwenvl_data.export import main as export_main
from qwenvl_data.models import DoRALinear, load_hf_model, merged_state_dict, qwen2_5_vl_from_hf_config, save_hf_model
from qwenvl_data.training import TrainingCheckpointer
from qwenvl_data.training._lora import save_adapter, train_adapters_only

REPO = Path(__file__).resolve().parents[2]
ALL_PROJECTIONS = dict(lora_attn_modules=["q_proj", "k_proj", "v_proj", "output_proj"], apply_lora_to_mlp=True,
                       apply_lora_to_output=True)  # fmt: skip


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A random transformers checkpoint with an untied output projection (so it can be adapted too)."""
    model_dir = tmp_path_factory.mktemp("base")
    save_random_hf_model(model_dir, seed=5, tie_word_embeddings=False)
    return model_dir


@pytest.fixture(scope="module")
def batch():
    return padded_collate_qwen2_5_vl([vl_sample((("image", 12, 8),), seed=3), vl_sample(seed=4)])


def trained_stand_in(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every trainable weight (adapters, DoRA magnitudes, merger/tower) as training would."""
    train_adapters_only(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return model.eval()


def max_logit_difference(ours: torch.Tensor, expected: torch.Tensor, batch: dict) -> float:
    real = batch["attention_mask"]
    return (ours[real] - expected[real]).abs().max().item()


@pytest.fixture(scope="module", params=[(False, "merger"), (True, "vision_tower"), (True, "adapters_only")],
                ids=["lora+merger", "dora+vision_tower", "dora"])  # fmt: skip
def trained(request, base_dir, batch):
    """A stand-in for a LoRA run on every projection the builders adapt, and its logits on ``batch``."""
    use_dora, full = request.param
    model = trained_stand_in(load_hf_model(
        base_dir, **ALL_PROJECTIONS, lora_rank=4, lora_alpha=16, use_dora=use_dora,
        train_merger=full == "merger", train_vision_tower=full == "vision_tower",
    ))  # fmt: skip
    with torch.no_grad():
        logits = model(**batch)
    return model, logits, use_dora, full


def test_peft_loads_our_adapter_and_gives_our_logits(trained, base_dir, batch, tmp_path):
    model, logits, use_dora, full = trained
    save_adapter(model, model.state_dict(), tmp_path / "adapter", base_model=str(base_dir))

    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"], config["use_dora"]) == ("LORA", 4, 16, use_dora)
    assert config["base_model_name_or_path"] == str(base_dir) and config["task_type"] == "CAUSAL_LM"
    assert config["modules_to_save"] == {"adapters_only": None, "merger": ["visual.merger"],
                                         "vision_tower": ["visual"]}[full]  # fmt: skip
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(base_dir)
    peft_model = PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    with torch.no_grad():
        assert max_logit_difference(logits, hf_forward(peft_model, batch).logits, batch) <= 1e-4


def test_merged_export_of_every_projection_equals_the_trained_model(trained, batch, tmp_path):
    model, logits, _, _ = trained
    save_hf_model(model, tmp_path)
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert max_logit_difference(logits, hf_forward(hf, batch).logits, batch) <= 1e-4


def test_adapter_keys_are_peft_names_for_transformers_module_paths(base_dir, tmp_path):
    from safetensors.torch import load_file

    model = trained_stand_in(load_hf_model(base_dir, lora_attn_modules=["q_proj"], lora_rank=2, lora_alpha=4,
                                           use_dora=True))  # fmt: skip
    save_adapter(model, model.state_dict(), tmp_path, base_model=None)
    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    prefix = "base_model.model.model.language_model.layers.0.self_attn.q_proj"
    assert {f"{prefix}.lora_A.weight", f"{prefix}.lora_B.weight", f"{prefix}.lora_magnitude_vector"} <= keys
    assert "base_model.model.model.visual.merger.mlp.0.weight" in keys  # train_merger defaults to true


def test_dora_leaves_the_bias_unscaled_like_peft():
    """y = m / ||W + s B A|| * (W x + s B A x) + b: PEFT's rule, on a layer with a bias (Qwen's q/k/v)."""
    from peft.tuners.lora import Linear as PeftLoraLinear

    torch.manual_seed(0)
    ours = DoRALinear(16, 8, rank=4, alpha=8, use_bias=True)
    with torch.no_grad():
        ours.bias.normal_()
        ours.lora_b.weight.normal_()
        ours.magnitude.copy_(torch.rand(8) + 0.5)
    base = torch.nn.Linear(16, 8)
    base.load_state_dict({"weight": ours.weight, "bias": ours.bias})
    peft_layer = PeftLoraLinear(base, "default", r=4, lora_alpha=8, use_dora=True)
    peft_layer.load_state_dict({
        "base_layer.weight": ours.weight, "base_layer.bias": ours.bias,
        "lora_A.default.weight": ours.lora_a.weight, "lora_B.default.weight": ours.lora_b.weight,
        "lora_magnitude_vector.default.weight": ours.magnitude,
    })  # fmt: skip
    x = torch.randn(5, 16)
    with torch.no_grad():
        assert torch.allclose(ours(x), peft_layer(x), atol=1e-6)
        merged = merged_state_dict(ours)
        assert torch.allclose(torch.nn.functional.linear(x, merged["weight"], merged["bias"]), ours(x), atol=1e-5)


# NF4 quantizes in blocks of 64 x 256 values: the tiny model's k/v projections (64 x 128) are too small for
# it, and quantizing the 151936-row output projection takes long on CPU.
NF4_PROJECTIONS = dict(lora_attn_modules=["q_proj", "output_proj"], apply_lora_to_mlp=True)


def test_qlora_export_dequantizes_the_nf4_base_and_equals_the_trained_model(base_dir, batch, tmp_path):
    model = trained_stand_in(load_hf_model(base_dir, **NF4_PROJECTIONS, lora_rank=4, lora_alpha=16, use_dora=True,
                                           quantize_base=True))  # fmt: skip
    save_hf_model(model, tmp_path)
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert max_logit_difference(model(**batch), hf_forward(hf, batch).logits, batch) <= 1e-4


def peft_made_adapter(base_dir, out_dir, *, use_dora: bool, seed: int = 1):
    """A PEFT run's adapter (attention q/v and the MLP of the language model, merger trained), made by peft."""
    torch.manual_seed(seed)
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(base_dir)
    config = LoraConfig(r=4, lora_alpha=8, use_dora=use_dora, modules_to_save=["merger"],
                        target_modules=r".*language_model.*\.(q_proj|v_proj|gate_proj|up_proj|down_proj)")  # fmt: skip
    peft_model = get_peft_model(hf, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name or "magnitude" in name:
                param.add_(0.05 * torch.randn(param.shape))
    peft_model.save_pretrained(out_dir)
    return peft_model.eval()


def lora_model_for(base_dir, **lora_args):
    return qwen2_5_vl_from_hf_config(json.loads((base_dir / "config.json").read_text()), **lora_args)


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_a_peft_adapter_loads_into_our_lora_model_through_the_checkpointer(base_dir, batch, tmp_path, use_dora):
    peft_model = peft_made_adapter(base_dir, tmp_path / "adapter", use_dora=use_dora)
    model = lora_model_for(base_dir, lora_attn_modules=["q_proj", "v_proj"], apply_lora_to_mlp=True,
                           lora_rank=4, lora_alpha=8, use_dora=use_dora)  # fmt: skip
    checkpointer = TrainingCheckpointer(str(tmp_path / "run"), checkpoint_dir=str(base_dir),
                                        adapter_dir=str(tmp_path / "adapter"))  # fmt: skip
    checkpointer.load_pretrained(model, torch.float32, trainable_only_missing=True)
    with torch.no_grad():
        assert max_logit_difference(model.eval()(**batch), hf_forward(peft_model, batch).logits, batch) <= 1e-4


def test_an_adapter_that_does_not_fit_the_configured_model_is_refused_naming_the_layers(base_dir, tmp_path):
    peft_made_adapter(base_dir, tmp_path / "adapter", use_dora=False)
    checkpointer = TrainingCheckpointer(str(tmp_path / "run"), checkpoint_dir=str(base_dir),
                                        adapter_dir=str(tmp_path / "adapter"))  # fmt: skip
    other_layers = lora_model_for(base_dir, lora_attn_modules=["q_proj", "k_proj"], lora_rank=4, lora_alpha=8)
    names = r"\(missing\) \['decoder.layers.0.attn.k_proj'.*\(unexpected\) \['decoder.layers.0.attn.v_proj'"
    with pytest.raises(ValueError, match=names):
        checkpointer.load_pretrained(other_layers, torch.float32, trainable_only_missing=True)
    other_scale = lora_model_for(base_dir, lora_attn_modules=["q_proj", "v_proj"], apply_lora_to_mlp=True,
                                 lora_rank=4, lora_alpha=16)  # fmt: skip
    with pytest.raises(ValueError, match="scale lora_alpha / r is 2, the model's 4"):
        checkpointer.load_pretrained(other_scale, torch.float32, trainable_only_missing=True)


def test_export_command_merges_a_peft_made_adapter_into_a_complete_directory(base_dir, batch, tmp_path):
    peft_model = peft_made_adapter(base_dir, tmp_path / "adapter", use_dora=True)
    command = [sys.executable, "-m", "qwenvl_data.export", "--checkpoint-dir", str(base_dir),
               "--adapter-dir", str(tmp_path / "adapter"), "--output-dir", str(tmp_path / "merged")]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert {"tokenizer.json", "preprocessor_config.json", "generation_config.json"} <= {
        p.name for p in (tmp_path / "merged").iterdir()
    }
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        expected = hf_forward(peft_model, batch).logits
        assert max_logit_difference(hf_forward(hf, batch).logits, expected, batch) <= 1e-4


def test_export_command_merges_our_adapter_to_the_trained_model(base_dir, batch, tmp_path):
    model = trained_stand_in(load_hf_model(base_dir, lora_attn_modules=["q_proj", "v_proj"], apply_lora_to_mlp=True,
                                           lora_rank=8, lora_alpha=8, use_dora=True))  # fmt: skip
    save_adapter(model, model.state_dict(), tmp_path / "adapter", base_model=str(base_dir))
    assert export_main(["--checkpoint-dir", str(base_dir), "--adapter-dir", str(tmp_path / "adapter"),
                        "--output-dir", str(tmp_path / "merged")]) == 0  # fmt: skip
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        assert max_logit_difference(model(**batch), hf_forward(hf, batch).logits, batch) <= 1e-4


def test_export_refuses_an_adapter_of_another_model_naming_the_keys(base_dir, tmp_path, capsys):
    model = trained_stand_in(load_hf_model(base_dir, lora_attn_modules=["q_proj"], apply_lora_to_output=True,
                                           lora_rank=2, lora_alpha=4))  # fmt: skip
    save_adapter(model, model.state_dict(), tmp_path / "adapter", base_model=str(base_dir))
    save_random_hf_model(tmp_path / "tied_base", seed=0, tie_word_embeddings=True)  # no lm_head to adapt
    out = tmp_path / "merged"
    assert export_main(["--checkpoint-dir", str(tmp_path / "tied_base"), "--adapter-dir", str(tmp_path / "adapter"),
                        "--output-dir", str(out)]) == 1  # fmt: skip
    assert "does not have: ['decoder.output.weight']" in capsys.readouterr().err
    assert not out.exists() and not out.with_name("merged.partial").exists()


def test_a_model_whose_adapter_cannot_be_written_is_refused_before_training():
    from qwenvl_data.models import lora_qwen2_5_vl_tiny

    model = lora_qwen2_5_vl_tiny(["q_proj"], lora_rank=2, lora_alpha=4)
    model.trainable_modules = ("visual.rope",)  # "trained in full", but it has no weights PEFT could save
    with pytest.raises(ValueError, match=r"module trained in full 'visual.rope' has no parameters"):
        train_adapters_only(model)
    model.trainable_modules = ("visual.merger.missing",)
    with pytest.raises(ValueError, match=r"'visual.merger.missing' has no PEFT modules_to_save name"):
        train_adapters_only(model)


def test_dora_loaded_onto_a_checkpoint_starts_from_the_base_model(base_dir, batch, tmp_path):
    """The magnitude starts at the loaded weights' row norms (torchtune leaves it empty until then)."""
    model = lora_model_for(base_dir, lora_attn_modules=["q_proj", "v_proj"], lora_rank=4, lora_alpha=8, use_dora=True)
    TrainingCheckpointer(str(tmp_path), checkpoint_dir=str(base_dir)).load_pretrained(
        model, torch.float32, trainable_only_missing=True
    )
    with torch.no_grad():
        assert max_logit_difference(model.eval()(**batch), load_hf_model(base_dir).eval()(**batch), batch) <= 1e-5


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_every_familys_adapter_with_its_mergers_trained_is_read_back_by_export_and_the_checkpointer(model_type,
                                                                                                     tmp_path):
    """The adapter a LoRA run writes (its mergers trained in full, the released configs' default) is read with
    the base's family's weight names: by ``export`` and by ``checkpointer.adapter_dir``."""
    under_test = FAMILIES[model_type]
    base = tmp_path / "base"
    under_test.save_random(base, seed=2, tie_word_embeddings=True)
    lora = dict(lora_attn_modules=["q_proj", "v_proj"], lora_rank=4, lora_alpha=8, train_merger=True)
    model = trained_stand_in(load_hf_model(base, **lora))
    assert any(name.startswith("visual.merger") for name in model.trainable_modules)
    save_adapter(model, model.state_dict(), tmp_path / "adapter", base_model=str(base))
    expected = merged_state_dict(model)

    assert export_main(["--checkpoint-dir", str(base), "--adapter-dir", str(tmp_path / "adapter"),
                        "--output-dir", str(tmp_path / "merged")]) == 0  # fmt: skip
    merged = load_hf_model(tmp_path / "merged").state_dict()
    assert merged.keys() == expected.keys()
    # W + scale * B @ A from the adapter file and in memory (fp32, |W| < 1 for the adapted projections): either
    # summation order rounds by at most (rank + 2) eps |W| < 7.2e-7, under 1e-6 on any CPU; other tensors are copies.
    assert all(torch.allclose(merged[k], expected[k], atol=1e-6) for k in expected)

    reloaded = load_hf_model(base, **lora)
    checkpointer = TrainingCheckpointer(str(tmp_path / "run"), checkpoint_dir=str(base),
                                        adapter_dir=str(tmp_path / "adapter"))  # fmt: skip
    checkpointer.load_pretrained(reloaded, torch.float32, trainable_only_missing=True)
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in model.state_dict().items())
