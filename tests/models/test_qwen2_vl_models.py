"""Qwen2-VL against transformers 5.24's ``Qwen2VLForConditionalGeneration`` on the same random weights."""

import json

import pytest
import torch
import torch.nn.functional as F
from support.models_reference import hf_forward, mm_token_type_ids, save_random_qwen2_vl_hf_model
from peft import PeftModel
from support.vl_samples import vl_sample
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

from qwenvl_data._constants import IGNORE_INDEX, VIDEO_PAD_ID, VISION_END_ID, VISION_START_ID
from qwenvl_data.collate import Qwen2_5_VLCollator, padded_collate_qwen2_5_vl
from qwenvl_data.models import (
    QWEN2_5_VL,
    QWEN2_VL,
    family_of_model,
    load_hf_model,
    load_hf_state_dict,
    model_family,
    qwen2_vl_2b,
    qwen2_vl_7b,
    qwen2_vl_72b,
    qwen2_vl_tiny,
    read_peft_adapter,
    save_hf_model,
    tune_to_hf,
)
from qwenvl_data.packing import packed_collate_qwen2_5_vl
from qwenvl_data.rope import mrope_position_ids
from qwenvl_data.training._lora import save_adapter, train_adapters_only

TOLERANCE = 1e-4
QWEN2_VL_RULE = QWEN2_VL.tokens_per_second  # None: temporal ids count temporal patches


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("hf_tiny_qwen2_vl")
    return model_dir, save_random_qwen2_vl_hf_model(model_dir)


@pytest.fixture(scope="module")
def ours(checkpoint):
    return load_hf_model(checkpoint[0]).eval()


def mixed_samples() -> list[dict]:
    """Two images, a video, text only, an image with a second video: small grids, so that the 151,936-wide
    output projection stays cheap. Each video's temporal patches fit under its merged spatial extent,
    where transformers 5.x follows the trained position rule."""
    return [
        vl_sample((("image", 4, 8), ("image", 6, 6)), question_len=6, seed=1),
        vl_sample((("video", 2, 4, 8, 1.0),), question_len=10, seed=2),
        vl_sample(question_len=3, answer_len=4, seed=3),
        vl_sample((("image", 8, 4), ("video", 3, 6, 6, 1.0)), question_len=4, seed=4),
    ]


def real(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    return logits[batch["attention_mask"]]


def test_loading_picks_qwen2_vl_from_the_model_type(checkpoint, ours):
    config = json.loads((checkpoint[0] / "config.json").read_text())
    assert config["model_type"] == "qwen2_vl" and "text_config" in config  # transformers 5.x nested layout
    assert family_of_model(ours) is QWEN2_VL
    assert ours.tokens_per_second is None
    assert all(layer.full_attention for layer in ours.visual.layers) and ours.visual.window_size is None


def test_logits_match_transformers_on_images_video_text_and_padding(checkpoint, ours):
    hf = checkpoint[1]
    batch = padded_collate_qwen2_5_vl(mixed_samples(), tokens_per_second=QWEN2_VL_RULE)
    with torch.no_grad():
        expected = hf_forward(hf, batch, labels=batch["labels"])
        logits = ours(**batch)
    assert (real(logits, batch) - real(expected.logits, batch)).abs().max() <= TOLERANCE
    loss = F.cross_entropy(
        logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE_INDEX
    )
    assert abs(loss.item() - expected.loss.item()) <= TOLERANCE


def test_text_only_batch_matches_transformers(checkpoint, ours):
    batch = padded_collate_qwen2_5_vl([vl_sample(question_len=4, seed=5), vl_sample(question_len=9, seed=6)])
    with torch.no_grad():
        expected = hf_forward(checkpoint[1], batch).logits
        logits = ours(**batch)
    assert (real(logits, batch) - real(expected, batch)).abs().max() <= TOLERANCE


def test_position_ids_equal_transformers_for_images_and_videos(checkpoint):
    hf = checkpoint[1]
    for padding_side in ("right", "left"):
        batch = Qwen2_5_VLCollator(padding_side, tokens_per_second=QWEN2_VL_RULE)(mixed_samples())
        expected, expected_deltas = hf.model.get_rope_index(
            batch["tokens"],
            mm_token_type_ids(batch["tokens"]),
            image_grid_thw=batch["image_grid_thw"],
            video_grid_thw=batch["video_grid_thw"],
            attention_mask=batch["attention_mask"].long(),
        )
        assert torch.equal(batch["position_ids"], expected)
        assert torch.equal(batch["rope_deltas"], expected_deltas)
    # Qwen2.5-VL's rule (the default, 2 ids per second) gives other temporal ids for these 1-second patches.
    assert not torch.equal(Qwen2_5_VLCollator("left")(mixed_samples())["position_ids"], batch["position_ids"])


def test_temporal_ids_count_temporal_patches_whatever_their_duration():
    # text, <|vision_start|>, a video of 3 temporal patches on a 2x2 merged grid (4x4 patches), <|vision_end|>, text
    tokens = torch.tensor([[100, VISION_START_ID] + [VIDEO_PAD_ID] * 12 + [VISION_END_ID, 200]])
    grid, seconds = torch.tensor([[3, 4, 4]]), torch.tensor([1.0])
    positions, deltas = mrope_position_ids(
        tokens, video_grid_thw=grid, second_per_grid_ts=seconds, tokens_per_second=None
    )
    assert positions[:, 0, 2:14].tolist() == [
        [2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4],
        [2, 2, 3, 3] * 3,
        [2, 3, 2, 3] * 3,
    ]
    # The text after the span starts past the largest id (4), as Qwen2-VL was trained (transformers 4.x);
    # transformers 5.x would restart at 2 + max(2, 2) = 4, reusing an id of the video.
    assert positions[:, 0, 14:].tolist() == [[5, 6]] * 3 and deltas.tolist() == [[7 - 16]]
    scaled, _ = mrope_position_ids(tokens, video_grid_thw=grid, second_per_grid_ts=seconds)  # Qwen2.5-VL: 2 per s
    assert scaled[0, 0, 2:14].tolist() == [2] * 4 + [4] * 4 + [6] * 4 and scaled[0, 0, 14:].tolist() == [7, 8]


def test_packed_rows_restart_positions_per_sample_by_the_qwen2_vl_rule():
    samples = [vl_sample((("video", 3, 4, 4, 1.0),), seed=7), vl_sample((("image", 8, 12),), seed=8)]
    packed = packed_collate_qwen2_5_vl(samples, max_seq_len=256, tokens_per_second=QWEN2_VL_RULE)
    alone = padded_collate_qwen2_5_vl(samples, tokens_per_second=QWEN2_VL_RULE)
    for doc in range(2):
        in_doc = packed["document_ids"][0] == doc
        alone_row = alone["position_ids"][:, doc, alone["attention_mask"][doc]]
        assert torch.equal(packed["position_ids"][:, 0, in_doc], alone_row)


def test_round_trip_saves_what_transformers_loads_with_the_same_logits(checkpoint, ours, tmp_path):
    model_dir, hf = checkpoint
    save_hf_model(ours, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "qwen2_vl" and config["architectures"] == ["Qwen2VLForConditionalGeneration"]
    assert "text_config" not in config  # the released flat layout
    original = load_hf_state_dict(model_dir)
    saved = load_hf_state_dict(tmp_path)
    assert {k.replace("model.language_model.", "model.").replace("model.visual.", "visual.") for k in original} == (
        saved.keys()
    )
    reloaded_hf = Qwen2VLForConditionalGeneration.from_pretrained(tmp_path).eval()
    batch = padded_collate_qwen2_5_vl(mixed_samples()[3:], tokens_per_second=QWEN2_VL_RULE)
    with torch.no_grad():  # the same weights, the same computation
        assert torch.equal(hf_forward(reloaded_hf, batch).logits, hf_forward(hf, batch).logits)
    reloaded = load_hf_model(tmp_path).state_dict()
    assert all(torch.equal(value, reloaded[key]) for key, value in ours.state_dict().items())


def test_lora_adapter_is_written_for_peft_on_transformers_qwen2_vl(checkpoint, ours, tmp_path):
    model_dir, hf = checkpoint
    lora = load_hf_model(model_dir, lora_attn_modules=["q_proj", "v_proj"], lora_rank=4, lora_alpha=8)
    adapted = lora.state_dict()  # LoRALinear keeps the base weight under its name, next to lora_a / lora_b
    assert all(torch.equal(value, adapted[key]) for key, value in ours.state_dict().items())
    train_adapters_only(lora)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a stand-in for training: move the adapters and the merger (LayerNorm bias included)
        for param in lora.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    save_adapter(lora.eval(), lora.state_dict(), tmp_path, base_model=str(model_dir))
    adapter = read_peft_adapter(tmp_path, tie_word_embeddings=True, key_map=QWEN2_VL.weight_key_map)
    assert {"visual.merger.norm.weight", "visual.merger.norm.bias"} <= adapter.full_weights.keys()
    batch = padded_collate_qwen2_5_vl(mixed_samples()[3:], tokens_per_second=QWEN2_VL_RULE)
    peft_model = PeftModel.from_pretrained(
        Qwen2VLForConditionalGeneration.from_pretrained(model_dir), tmp_path
    ).eval()
    with torch.no_grad():
        expected = hf_forward(peft_model, batch).logits
        assert (real(lora(**batch), batch) - real(expected, batch)).abs().max() <= TOLERANCE


def test_qwen3_vl_moe_and_unknown_model_types_are_refused_by_name(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_vl_moe"}))
    with pytest.raises(ValueError, match=r"model_type 'qwen3_vl_moe' \(Qwen3-VL-MoE\) is not yet supported"):
        load_hf_model(tmp_path)
    with pytest.raises(ValueError, match="'llava' is not a supported Qwen-VL family"):
        model_family("llava")
    with pytest.raises(ValueError, match="my.json: no model_type"):
        model_family(None, "my.json")
    assert model_family("qwen2_5_vl") is QWEN2_5_VL


def test_family_descriptions_differ_only_in_the_position_rule_and_the_model():
    assert family_of_model(qwen2_vl_tiny()) is QWEN2_VL
    assert QWEN2_VL.patch_size == QWEN2_5_VL.patch_size == 14
    assert (QWEN2_VL.image_mean, QWEN2_VL.image_max_pixels) == (QWEN2_5_VL.image_mean, QWEN2_5_VL.image_max_pixels)
    assert QWEN2_VL.tokens_per_second is None and QWEN2_5_VL.tokens_per_second == 2


# Released text sizes of Qwen/Qwen2-VL-{2B,7B,72B}-Instruct config.json (flat layout); the tower is shared.
RELEASED = {
    "2b": (qwen2_vl_2b, dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                            num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                            tie_word_embeddings=True)),
    "7b": (qwen2_vl_7b, dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                            num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                            tie_word_embeddings=False)),
    "72b": (qwen2_vl_72b, dict(hidden_size=8192, intermediate_size=29568, num_hidden_layers=80,
                              num_attention_heads=64, num_key_value_heads=8, vocab_size=152064,
                              tie_word_embeddings=False)),
}  # fmt: skip


def released_config(size: str) -> dict:
    text = RELEASED[size][1]
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl", "hidden_act": "silu",
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "use_sliding_window": False, **text,
        "vision_config": {
            "depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "in_chans": 3,
            "hidden_size": text["hidden_size"], "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
            "temporal_patch_size": 2,
        },
    }  # fmt: skip


@pytest.mark.parametrize("size", list(RELEASED))
def test_size_builders_match_transformers_on_the_released_config(size):
    config = released_config(size)
    with torch.device("meta"):
        ours = RELEASED[size][0]()
        from_config = QWEN2_VL.model_from_hf_config(config)
        reference = Qwen2VLForConditionalGeneration(Qwen2VLConfig(**config))
    expected = {
        k.replace("model.language_model.", "model.").replace("model.visual.", "visual."): tuple(v.shape)
        for k, v in reference.state_dict().items()
        if not (k == "lm_head.weight" and config["tie_word_embeddings"])
    }
    for model in (ours, from_config):
        hf = tune_to_hf(
            dict(model.state_dict()),
            in_channels=3,
            temporal_patch_size=2,
            patch_size=14,
            key_map=QWEN2_VL.weight_key_map,
        )
        assert {k: tuple(v.shape) for k, v in hf.items()} == expected
    assert QWEN2_VL.hf_config_from_model(ours, torch.bfloat16)["vision_config"]["mlp_ratio"] == 4


def test_flat_and_nested_config_layouts_give_the_same_builder_arguments():
    flat = released_config("2b")
    nested = Qwen2VLConfig(**flat).to_dict()  # transformers 5.x: text_config + rope_parameters
    assert "text_config" in nested and "hidden_size" not in nested
    assert QWEN2_VL.builder_args_from_hf_config(nested) == QWEN2_VL.builder_args_from_hf_config(flat)
    with pytest.raises(ValueError, match="model_type 'qwen2_vl', expected 'qwen2_5_vl'"):
        QWEN2_5_VL.builder_args_from_hf_config(flat)
