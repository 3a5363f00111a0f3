"""The model family and size come from the checkpoint's config.json; a builder named for another family or size is
refused naming both."""

import pytest
from support.models_reference import save_random_hf_model, tiny_hf_config, tiny_qwen2_vl_hf_config
from transformers import Qwen2_5_VLConfig

from qwenvl_data.models import (
    QWEN2_VL,
    check_builder_fits_checkpoint,
    family_of_model,
    load_hf_model,
    model_from_checkpoint,
    qwen2_5_vl_from_checkpoint,
)

# The released Qwen2.5-VL-7B-Instruct config.json's shapes (transformers writes the nested layout).
RELEASED_7B = Qwen2_5_VLConfig(
    text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False),
    vision_config=dict(depth=32, hidden_size=1280, num_heads=16, intermediate_size=3420,
                       fullatt_block_indexes=[7, 15, 23, 31], out_hidden_size=3584),
    tie_word_embeddings=False,
)  # fmt: skip


@pytest.fixture
def released_7b(tmp_path):
    RELEASED_7B.save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("builder", ["qwenvl_data.models.qwen2_5_vl_7b", "qwenvl_data.models.lora_qwen2_5_vl_7b",
                                     "qwenvl_data.models.qwen2_5_vl_from_checkpoint"])  # fmt: skip
def test_a_builder_that_agrees_with_config_json_passes(released_7b, builder):
    check_builder_fits_checkpoint(builder, released_7b)


def test_a_builder_of_another_size_is_refused_naming_both_and_the_one_that_fits(released_7b):
    with pytest.raises(ValueError) as error:
        check_builder_fits_checkpoint("qwenvl_data.models.lora_qwen2_5_vl_3b", released_7b)
    message = str(error.value)
    assert "lora_qwen2_5_vl_3b" in message and str(released_7b / "config.json") in message
    assert "num_layers 36 vs 28" in message and "embed_dim 2048 vs 3584" in message
    assert "fits qwenvl_data.models.lora_qwen2_5_vl_7b" in message


def test_without_a_checkpoint_any_builder_passes():
    check_builder_fits_checkpoint("qwenvl_data.models.qwen2_5_vl_72b", None)


def test_from_checkpoint_builds_what_load_hf_model_loads(tmp_path):
    save_random_hf_model(tmp_path, seed=3)
    built = qwen2_5_vl_from_checkpoint(tmp_path)
    loaded = load_hf_model(tmp_path)
    shapes = {name: tuple(p.shape) for name, p in built.state_dict().items()}
    assert shapes == {name: tuple(p.shape) for name, p in loaded.state_dict().items()}
    lora = qwen2_5_vl_from_checkpoint(tmp_path, lora_attn_modules=["q_proj"], lora_rank=4, lora_alpha=8)
    assert any(name.endswith("lora_a.weight") for name in lora.state_dict())
    assert built.tok_embeddings.weight.shape[1] == tiny_hf_config().text_config.hidden_size


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_a_qwen2_vl_checkpoint_builds_qwen2_vl_under_either_name(tmp_path, tied):
    tiny_qwen2_vl_hf_config(tie_word_embeddings=tied).save_pretrained(tmp_path)
    for builder in (model_from_checkpoint, qwen2_5_vl_from_checkpoint):
        lora = builder(tmp_path, lora_attn_modules=["q_proj"], lora_rank=4, lora_alpha=8)
        assert family_of_model(lora) is QWEN2_VL and lora.tokens_per_second is None
        assert ("decoder.output.weight" in lora.state_dict()) is not tied


def test_a_builder_of_another_family_or_tie_is_refused_naming_what_differs(tmp_path):
    tiny_qwen2_vl_hf_config().save_pretrained(tmp_path / "tied")
    with pytest.raises(ValueError) as error:
        check_builder_fits_checkpoint("qwenvl_data.models.lora_qwen2_5_vl_tiny", tmp_path / "tied")
    assert "model_type qwen2_5_vl vs qwen2_vl" in str(error.value)
    assert "fits qwenvl_data.models.lora_qwen2_vl_tiny" in str(error.value)
    check_builder_fits_checkpoint("qwenvl_data.models.lora_qwen2_vl_tiny", tmp_path / "tied")
    tiny_qwen2_vl_hf_config(tie_word_embeddings=False).save_pretrained(tmp_path / "untied")
    with pytest.raises(ValueError) as error:
        check_builder_fits_checkpoint("qwenvl_data.models.lora_qwen2_vl_tiny", tmp_path / "untied")
    assert "tie_word_embeddings True vs False" in str(error.value)
    assert "qwenvl_data.models.model_from_checkpoint" in str(error.value)
