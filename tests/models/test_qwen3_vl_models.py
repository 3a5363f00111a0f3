"""Qwen3-VL against transformers 5.24's ``Qwen3VLForConditionalGeneration`` on the same random weights.

Tolerance for logits of the two implementations (different kernels, same float32 arithmetic): each of the
~7 residual blocks on the way (3 vision blocks and the merger, 2 decoder layers, the output projection) may
round differently, by about float32 eps * sqrt(K) relative to the values it carries (K = 256, the longest
reduction), so TOLERANCE = eps * sqrt(256) * 7 * (largest reference logit).
"""

import json

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel
from support.models_reference import hf_generate
from support.qwen3_vl_reference import (
    qwen3_vl_batch,
    qwen3_vl_hf_forward,
    qwen3_vl_sample,
    save_random_qwen3_vl_hf_model,
)
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

from qwenvl_data._constants import IGNORE_INDEX, PAD_ID
from qwenvl_data.generation import generate
from qwenvl_data.models import (
    QWEN3_VL,
    Qwen3VLModel,
    check_builder_fits_checkpoint,
    family_of_model,
    load_hf_model,
    load_hf_state_dict,
    model_from_checkpoint,
    qwen3_vl_2b,
    qwen3_vl_4b,
    qwen3_vl_8b,
    qwen3_vl_32b,
    read_peft_adapter,
    save_hf_model,
    tune_to_hf,
)
from qwenvl_data.models import _model as model_module
from qwenvl_data.training._lora import save_adapter, train_adapters_only

EPS32 = torch.finfo(torch.float32).eps


def tolerance(reference: torch.Tensor) -> float:
    return EPS32 * 256**0.5 * 7 * reference.abs().max().item()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("hf_tiny_qwen3_vl")
    return model_dir, save_random_qwen3_vl_hf_model(model_dir)


@pytest.fixture(scope="module")
def ours(checkpoint):
    return load_hf_model(checkpoint[0]).eval()


def mixed_samples() -> list[dict]:
    """Text only; an image; two images (one larger, one smaller than the 8 x 8 position table); a 2-frame video;
    an image and a 3-frame video."""
    return [
        qwen3_vl_sample(seed=1),
        qwen3_vl_sample((("image", 6, 6),), seed=2),
        qwen3_vl_sample((("image", 4, 8), ("image", 12, 10)), seed=3),
        qwen3_vl_sample((("video", 2, 4, 6),), text_len=9, seed=4),
        qwen3_vl_sample((("image", 8, 4), ("video", 3, 6, 4)), seed=5),
    ]


def real(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    return logits[batch["attention_mask"]]


def test_loading_picks_qwen3_vl_from_the_model_type(checkpoint, ours):
    config = json.loads((checkpoint[0] / "config.json").read_text())
    assert config["model_type"] == "qwen3_vl" and "text_config" in config
    assert isinstance(ours, Qwen3VLModel) and family_of_model(ours) is QWEN3_VL
    assert ours.visual.deepstack_layers == (0, 1) and ours.visual.pos_embed.side == 8
    assert ours.visual.patch_embed.in_features == 1536 and ours.decoder.layers[0].attn.head_dim == 48


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_logits_and_loss_match_transformers_on_text_images_videos_and_padding(checkpoint, ours, padding_side):
    hf = checkpoint[1]
    batch = qwen3_vl_batch(mixed_samples(), hf, padding_side)
    with torch.no_grad():
        expected = qwen3_vl_hf_forward(hf, batch, labels=batch["labels"])
        logits = ours(**batch)
    assert (real(logits, batch) - real(expected.logits, batch)).abs().max() <= tolerance(real(expected.logits, batch))
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE_INDEX)
    assert abs(loss.item() - expected.loss.item()) <= EPS32 * 256**0.5 * 7 * expected.loss.item()


@pytest.mark.parametrize("rows", [[1, 2], [3]], ids=["images_only", "video_only"])
def test_logits_match_transformers_for_one_modality(checkpoint, ours, rows):
    hf = checkpoint[1]
    batch = qwen3_vl_batch([mixed_samples()[row] for row in rows], hf)
    with torch.no_grad():
        expected = real(qwen3_vl_hf_forward(hf, batch).logits, batch)
        assert (real(ours(**batch), batch) - expected).abs().max() <= tolerance(expected)


def test_deepstack_features_reach_the_logits(checkpoint, ours):
    """Without the DeepStack mergers' contribution the logits at and after the vision tokens move far
    beyond the tolerance: the parity above does check DeepStack."""
    hf = checkpoint[1]
    batch = qwen3_vl_batch(mixed_samples()[1:3], hf)
    with torch.no_grad():
        expected = real(qwen3_vl_hf_forward(hf, batch).logits, batch)
        saved = [(m.fc2.weight.clone(), m.fc2.bias.clone()) for m in ours.visual.deepstack_mergers]
        try:
            for merger in ours.visual.deepstack_mergers:
                merger.fc2.weight.zero_()
                merger.fc2.bias.zero_()
            without = real(ours(**batch), batch)
        finally:
            for merger, (weight, bias) in zip(ours.visual.deepstack_mergers, saved):
                merger.fc2.weight.copy_(weight)
                merger.fc2.bias.copy_(bias)
    assert (without - expected).abs().max() > 1000 * tolerance(expected)


def test_position_ids_the_model_computes_equal_transformers(checkpoint, ours):
    """Each video frame is its own span: ``video_grid_thw`` stays per video, as transformers' processor gives it."""
    batch = qwen3_vl_batch(mixed_samples(), checkpoint[1], "left")
    assert batch["video_grid_thw"].tolist() == [[2, 4, 6], [3, 6, 4]]
    computed, deltas = ours.mrope_position_ids(
        batch["tokens"], batch["image_grid_thw"], batch["video_grid_thw"], attention_mask=batch["attention_mask"]
    )
    assert torch.equal(computed, batch["position_ids"]) and torch.equal(deltas, batch["rope_deltas"])


def test_packed_row_equals_each_sample_alone(checkpoint, ours):
    hf = checkpoint[1]
    samples = [mixed_samples()[4], mixed_samples()[0], mixed_samples()[2]]
    alone = [qwen3_vl_batch([sample], hf) for sample in samples]
    padding = 5
    packed = {
        "tokens": torch.cat([b["tokens"] for b in alone] + [torch.full((1, padding), PAD_ID)], 1),
        "position_ids": torch.cat(
            [b["position_ids"] for b in alone] + [torch.zeros(3, 1, padding, dtype=torch.long)], 2
        ),
        "document_ids": torch.cat(
            [torch.full_like(b["tokens"], doc) for doc, b in enumerate(alone)] + [torch.full((1, padding), -1)], 1
        ),
    }
    for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"):
        packed[key] = torch.cat([b[key] for b in alone if key in b])
    with torch.no_grad():
        logits = ours(**packed)[0]
        start = 0
        for batch in alone:
            length = batch["tokens"].shape[1]
            expected = ours(**batch)[0]
            assert (logits[start : start + length] - expected).abs().max() <= tolerance(expected)
            start += length


def test_round_trip_saves_what_transformers_loads_with_the_same_logits(checkpoint, ours, tmp_path):
    model_dir, hf = checkpoint
    save_hf_model(ours, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "qwen3_vl" and config["architectures"] == ["Qwen3VLForConditionalGeneration"]
    assert config["text_config"]["rope_parameters"]["mrope_interleaved"] is True
    preprocessor = json.loads((tmp_path / "preprocessor_config.json").read_text())  # the family's numbers
    assert (preprocessor["patch_size"], preprocessor["image_mean"]) == (16, [0.5, 0.5, 0.5])
    assert load_hf_state_dict(tmp_path).keys() == load_hf_state_dict(model_dir).keys()  # the released names
    reloaded_hf = Qwen3VLForConditionalGeneration.from_pretrained(tmp_path).eval()
    batch = qwen3_vl_batch(mixed_samples()[3:], hf)
    with torch.no_grad():  # the same weights, the same computation
        assert torch.equal(qwen3_vl_hf_forward(reloaded_hf, batch).logits, qwen3_vl_hf_forward(hf, batch).logits)
    reloaded = load_hf_model(tmp_path).state_dict()
    assert all(torch.equal(value, reloaded[key]) for key, value in ours.state_dict().items())
    assert isinstance(model_from_checkpoint(tmp_path), Qwen3VLModel)
    check_builder_fits_checkpoint("qwenvl_data.models.qwen3_vl_tiny", tmp_path)
    with pytest.raises(ValueError, match="model_type qwen2_5_vl vs qwen3_vl"):
        check_builder_fits_checkpoint("qwenvl_data.models.qwen2_5_vl_tiny", tmp_path)


def test_greedy_generation_equals_transformers_generate(checkpoint, ours):
    hf = checkpoint[1]
    prompts = [qwen3_vl_sample((("image", 6, 6),), seed=6), qwen3_vl_sample((("video", 2, 4, 4),), seed=7),
               qwen3_vl_sample(text_len=3, seed=8)]  # fmt: skip
    for prompt in prompts:  # prompts end before the answer
        prompt["tokens"] = prompt["tokens"][: prompt["labels"].index(next(x for x in prompt["labels"] if x >= 0))]
    batch = qwen3_vl_batch(prompts, hf, "left")
    new_tokens = 6
    out = generate(ours, batch, max_new_tokens=new_tokens, stop_tokens=())
    reference = hf_generate(hf, batch, new_tokens)
    assert torch.equal(out.tokens, reference)
    without_positions = {k: v for k, v in batch.items() if k not in ("position_ids", "rope_deltas")}
    assert torch.equal(generate(ours, without_positions, max_new_tokens=new_tokens, stop_tokens=()).tokens, reference)
    assert len({tuple(row) for row in out.tokens.tolist()}) == len(prompts)


def test_lora_adapter_is_written_for_peft_on_transformers_qwen3_vl(checkpoint, ours, tmp_path):
    model_dir, _ = checkpoint
    lora = load_hf_model(model_dir, lora_attn_modules=["q_proj", "v_proj"], apply_lora_to_mlp=True, lora_rank=4,
                         lora_alpha=8)  # fmt: skip
    assert lora.trainable_modules == ("visual.merger", "visual.deepstack_mergers.0", "visual.deepstack_mergers.1")
    train_adapters_only(lora)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a stand-in for training: move the adapters and every merger
        for param in lora.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    save_adapter(lora.eval(), lora.state_dict(), tmp_path, base_model=str(model_dir))
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["modules_to_save"] == [
        "visual.merger", "visual.deepstack_merger_list.0", "visual.deepstack_merger_list.1"
    ]  # fmt: skip
    adapter = read_peft_adapter(tmp_path, tie_word_embeddings=True, key_map=QWEN3_VL.weight_key_map)
    assert "visual.deepstack_mergers.1.norm.bias" in adapter.full_weights
    batch = qwen3_vl_batch(mixed_samples()[3:], checkpoint[1])
    peft_model = PeftModel.from_pretrained(Qwen3VLForConditionalGeneration.from_pretrained(model_dir), tmp_path).eval()
    with torch.no_grad():
        expected = real(qwen3_vl_hf_forward(peft_model, batch).logits, batch)
        assert (real(lora(**batch), batch) - expected).abs().max() <= tolerance(expected)


def test_text_only_batch_still_runs_every_vision_parameter_when_ranks_run_in_lockstep(checkpoint, ours, monkeypatch):
    """FSDP2: a rank without media runs the tower, every DeepStack merger included, on zeros (zero gradients)."""
    monkeypatch.setattr(model_module, "_ranks_in_lockstep", lambda: True)
    model = load_hf_model(checkpoint[0])
    batch = qwen3_vl_batch(mixed_samples()[:1], checkpoint[1])
    logits = model(**batch)
    with torch.no_grad():
        assert torch.equal(logits, ours(**batch))  # adding the idle pass's zero changes nothing
    logits.float().logsumexp(-1).sum().backward()
    for name, param in model.visual.named_parameters():
        assert param.grad is not None and not param.grad.any(), name


# Released Qwen/Qwen3-VL-{2B,4B,8B,32B}-Instruct config.json numbers (see _qwen3_vl_model_builders for sources).
RELEASED = {
    "2b": (qwen3_vl_2b, dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                            num_key_value_heads=8, tie=True), "small"),
    "4b": (qwen3_vl_4b, dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                            num_key_value_heads=8, tie=True), "small"),
    "8b": (qwen3_vl_8b, dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                            num_key_value_heads=8, tie=False), "large"),
    "32b": (qwen3_vl_32b, dict(hidden_size=5120, intermediate_size=25600, num_hidden_layers=64,
                              num_attention_heads=64, num_key_value_heads=8, tie=False), "large"),
}  # fmt: skip
TOWERS = {
    "small": dict(depth=24, hidden_size=1024, intermediate_size=4096, deepstack_visual_indexes=[5, 11, 17]),
    "large": dict(depth=27, hidden_size=1152, intermediate_size=4304, deepstack_visual_indexes=[8, 16, 24]),
}


def released_config(size: str) -> dict:
    """The released layout: nested, RoPE under text_config.rope_scaling + rope_theta."""
    _, text, tower = RELEASED[size]
    text = dict(text)
    tie = text.pop("tie")
    return {
        "architectures": ["Qwen3VLForConditionalGeneration"], "model_type": "qwen3_vl", "tie_word_embeddings": tie,
        "image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
        "text_config": {
            "model_type": "qwen3_vl_text", "attention_bias": False, "head_dim": 128, "hidden_act": "silu",
            "max_position_embeddings": 262144, "rms_norm_eps": 1e-06, "rope_theta": 5000000,
            "rope_scaling": {"mrope_interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default"},
            "tie_word_embeddings": tie, "vocab_size": 151936, **text,
        },
        "vision_config": {
            "model_type": "qwen3_vl", "hidden_act": "gelu_pytorch_tanh", "in_channels": 3, "num_heads": 16,
            "num_position_embeddings": 2304, "out_hidden_size": text["hidden_size"], "patch_size": 16,
            "spatial_merge_size": 2, "temporal_patch_size": 2, **TOWERS[tower],
        },
    }  # fmt: skip


@pytest.mark.parametrize("size", list(RELEASED))
def test_size_builders_match_transformers_on_the_released_config(size):
    config = released_config(size)
    with torch.device("meta"):
        ours = RELEASED[size][0]()
        from_config = QWEN3_VL.model_from_hf_config(config)
        reference = Qwen3VLForConditionalGeneration(Qwen3VLConfig(**config))
    expected = {
        k: tuple(v.shape)
        for k, v in reference.state_dict().items()
        if not (k == "lm_head.weight" and config["tie_word_embeddings"])
    }
    for model in (ours, from_config):
        hf = tune_to_hf(dict(model.state_dict()), in_channels=3, temporal_patch_size=2, patch_size=16,
                        key_map=QWEN3_VL.weight_key_map)  # fmt: skip
        assert {k: tuple(v.shape) for k, v in hf.items()} == expected
    saved = QWEN3_VL.hf_config_from_model(ours, torch.bfloat16)
    assert QWEN3_VL.builder_args_from_hf_config(saved) == QWEN3_VL.builder_args_from_hf_config(config)


def test_released_and_transformers_config_spellings_give_the_same_builder_arguments():
    released = released_config("8b")
    rewritten = Qwen3VLConfig(**released).to_dict()  # transformers 5.x: rope_parameters
    assert "rope_parameters" in rewritten["text_config"] and "rope_scaling" not in rewritten["text_config"]
    assert QWEN3_VL.builder_args_from_hf_config(rewritten) == QWEN3_VL.builder_args_from_hf_config(released)
    released["text_config"]["rope_scaling"]["mrope_interleaved"] = False
    with pytest.raises(ValueError, match="mrope_interleaved False is not supported"):
        QWEN3_VL.builder_args_from_hf_config(released)
