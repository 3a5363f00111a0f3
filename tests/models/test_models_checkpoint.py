"""HF checkpoint conversion and I/O: released configs, exact round trips, transformers loading our saves."""

import json

import pytest
import torch
from support.models_reference import hf_forward, save_random_hf_model, tiny_hf_config
from safetensors.torch import load_file, save_file
from torchtune.modules import TiedLinear
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from support.vl_samples import vl_sample

from qwenvl_data.collate import padded_collate_qwen2_5_vl
from qwenvl_data.models import (
    builder_args_from_hf_config,
    hf_to_tune,
    load_hf_model,
    load_hf_state_dict,
    qwen2_5_vl_3b,
    qwen2_5_vl_7b,
    qwen2_5_vl_32b,
    qwen2_5_vl_72b,
    qwen2_5_vl_from_hf_config,
    qwen2_5_vl_tiny,
    save_hf_model,
    tune_to_hf,
)

# The text fields of the released checkpoints' config.json (Qwen/Qwen2.5-VL-*-Instruct), flat layout.
RELEASED = {
    "3b": (qwen2_5_vl_3b, dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                              num_attention_heads=16, num_key_value_heads=2, vocab_size=151936,
                              tie_word_embeddings=True)),
    "7b": (qwen2_5_vl_7b, dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                              num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                              tie_word_embeddings=False)),
    "32b": (qwen2_5_vl_32b, dict(hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
                                num_attention_heads=40, num_key_value_heads=8, vocab_size=152064,
                                tie_word_embeddings=False)),
    "72b": (qwen2_5_vl_72b, dict(hidden_size=8192, intermediate_size=29568, num_hidden_layers=80,
                                num_attention_heads=64, num_key_value_heads=8, vocab_size=152064,
                                tie_word_embeddings=False)),
}  # fmt: skip


def released_config(size: str) -> dict:
    text = RELEASED[size][1]
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "hidden_act": "silu",
        "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "use_sliding_window": False,
        **text,
        "vision_config": {
            "depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
            "in_chans": 3, "out_hidden_size": text["hidden_size"], "patch_size": 14, "spatial_merge_size": 2,
            "spatial_patch_size": 14, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
            "tokens_per_second": 2, "temporal_patch_size": 2,
        },
    }  # fmt: skip


def hf_shapes(model: torch.nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def our_shapes_in_hf_names(model: torch.nn.Module) -> dict[str, tuple]:
    hf = tune_to_hf(dict(model.state_dict()), in_channels=3, temporal_patch_size=2, patch_size=14)
    return {k: tuple(v.shape) for k, v in hf.items()}


def transformers_keys(config: Qwen2_5_VLConfig) -> dict[str, tuple]:
    """Shapes of transformers' model for ``config``, under the names its save_pretrained writes."""
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    shapes = {}
    for key, shape in hf_shapes(model).items():
        key = key.replace("model.language_model.", "model.").replace("model.visual.", "visual.")
        if not (key == "lm_head.weight" and config.tie_word_embeddings):
            shapes[key] = shape
    return shapes


@pytest.mark.parametrize("size", list(RELEASED))
def test_size_builders_have_every_weight_of_the_released_checkpoint(size):
    builder = RELEASED[size][0]
    with torch.device("meta"):
        ours = builder()
        from_config = qwen2_5_vl_from_hf_config(released_config(size))
    expected = transformers_keys(Qwen2_5_VLConfig(**released_config(size)))
    assert our_shapes_in_hf_names(ours) == expected
    assert our_shapes_in_hf_names(from_config) == expected


def test_flat_and_nested_config_layouts_build_the_same_model():
    flat = released_config("7b")
    nested = Qwen2_5_VLConfig(**flat).to_dict()  # transformers 5.x: text_config + rope_parameters
    assert "text_config" in nested and "rope_parameters" in nested["text_config"]
    assert "hidden_size" not in nested
    assert builder_args_from_hf_config(nested) == builder_args_from_hf_config(flat)


def test_unsupported_config_is_refused():
    config = released_config("3b")
    config["rope_scaling"] = {"type": "yarn", "factor": 4.0}
    with pytest.raises(ValueError, match="RoPE type 'yarn'"):
        builder_args_from_hf_config(config)


def test_state_dict_round_trip_is_exact():
    torch.manual_seed(0)
    state_dict = dict(qwen2_5_vl_tiny().state_dict())
    hf = tune_to_hf(state_dict, in_channels=3, temporal_patch_size=2, patch_size=14)
    assert hf["visual.patch_embed.proj.weight"].shape == (64, 3, 2, 14, 14)
    back = hf_to_tune(hf, tie_word_embeddings=True)
    assert back.keys() == state_dict.keys()
    assert all(torch.equal(back[k], state_dict[k]) for k in state_dict)


def test_our_save_loads_in_transformers_with_the_same_logits(tmp_path):
    torch.manual_seed(1)
    ours = qwen2_5_vl_tiny().eval()
    save_hf_model(ours, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["rope_scaling"]["mrope_section"] == [4, 6, 6] and config["tie_word_embeddings"] is True
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path).eval()
    batch = padded_collate_qwen2_5_vl([vl_sample((("image", 8, 12),), seed=1), vl_sample(seed=2)])
    with torch.no_grad():
        difference = (ours(**batch) - hf_forward(hf, batch).logits)[batch["attention_mask"]]
    assert difference.abs().max() <= 1e-4


def test_untied_checkpoint_survives_load_and_save_unchanged(tmp_path):
    hf = save_random_hf_model(tmp_path / "hf", seed=2, tie_word_embeddings=False)
    ours = load_hf_model(tmp_path / "hf")
    assert not isinstance(ours.decoder.output, TiedLinear)
    save_hf_model(ours, tmp_path / "ours")
    original = load_file(tmp_path / "hf" / "model.safetensors")
    saved = load_file(tmp_path / "ours" / "model.safetensors")
    assert "lm_head.weight" in saved and saved.keys() == original.keys()
    assert all(torch.equal(saved[k], original[k]) for k in original)
    assert hf.config.tie_word_embeddings is False


def test_sharded_save_has_an_index_and_loads_back(tmp_path):
    torch.manual_seed(3)
    ours = qwen2_5_vl_tiny()
    save_hf_model(ours, tmp_path, max_shard_bytes=20 * 1024**2, dtype=torch.bfloat16)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and not (tmp_path / "model.safetensors").exists()
    assert load_hf_state_dict(tmp_path).keys() == index["weight_map"].keys()
    loaded = load_hf_model(tmp_path, dtype=torch.bfloat16)
    assert loaded.tok_embeddings.weight.dtype == torch.bfloat16
    expected = ours.state_dict()
    assert all(torch.equal(v, expected[k].to(torch.bfloat16)) for k, v in loaded.state_dict().items())


def test_missing_weights_are_reported(tmp_path):
    save_random_hf_model(tmp_path, seed=4)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"lacks \['decoder.layers.1.mlp.w3.weight'\]"):
        load_hf_model(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_hf_model(tmp_path)


def test_tiny_hf_config_matches_our_tiny_model():
    with torch.device("meta"):
        ours = qwen2_5_vl_tiny()
    assert our_shapes_in_hf_names(ours) == transformers_keys(tiny_hf_config())
