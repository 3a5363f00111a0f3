"""Our Qwen2.5-VL against transformers' on the same random weights, fed batches from our collator."""

import pytest
import torch
import torch.nn.functional as F
from support.models_reference import hf_forward, mm_token_type_ids, save_random_hf_model
from support.vl_samples import vl_sample

from qwenvl_data._constants import IGNORE_INDEX, IMAGE_PAD_ID
from qwenvl_data.collate import padded_collate_qwen2_5_vl
from qwenvl_data.errors import PlaceholderMismatchError
from qwenvl_data.models import load_hf_model, next_position_ids, qwen2_5_vl_tiny
from qwenvl_data.packing import packed_collate_qwen2_5_vl

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("hf_tiny")
    hf = save_random_hf_model(model_dir)
    return model_dir, hf


@pytest.fixture(scope="module")
def models(checkpoint):
    model_dir, hf = checkpoint
    return load_hf_model(model_dir).eval(), hf


def mixed_samples() -> list[dict]:
    """Two images of different sizes (several attention windows each), a video, text only."""
    return [
        vl_sample((("image", 12, 20), ("image", 8, 8)), seed=1),
        vl_sample((("video", 2, 8, 12, 1.0),), question_len=20, seed=2),
        vl_sample(question_len=5, answer_len=4, seed=3),
        vl_sample((("image", 20, 12), ("video", 4, 4, 4, 0.5)), seed=4),
    ]


def real(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    return logits[batch["attention_mask"]]


def shifted_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)


def test_logits_and_loss_match_transformers_on_images_video_text_and_padding(models):
    ours, hf = models
    batch = padded_collate_qwen2_5_vl(mixed_samples())
    with torch.no_grad():
        expected = hf_forward(hf, batch, labels=batch["labels"])
    logits = ours(**batch)
    assert logits.shape == expected.logits.shape
    assert (real(logits, batch) - real(expected.logits, batch)).abs().max() <= TOLERANCE
    loss = shifted_loss(logits, batch["labels"])
    assert abs(loss.item() - expected.loss.item()) <= TOLERANCE
    loss.backward()
    grads = [p.grad for p in ours.visual.parameters()] + [ours.tok_embeddings.weight.grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert ours.visual.patch_embed.weight.grad.abs().sum() > 0  # the loss reaches the vision tower
    ours.zero_grad(set_to_none=True)


def test_left_padded_batch_matches_transformers(models):
    ours, hf = models
    batch = padded_collate_qwen2_5_vl(mixed_samples()[1:], padding_side="left")
    with torch.no_grad():
        expected = hf_forward(hf, batch).logits
        logits = ours(**batch)
    assert (real(logits, batch) - real(expected, batch)).abs().max() <= TOLERANCE


def test_text_only_batch_matches_transformers(models):
    ours, hf = models
    batch = padded_collate_qwen2_5_vl([vl_sample(seed=5), vl_sample(question_len=30, seed=6)])
    assert "pixel_values" not in batch
    with torch.no_grad():
        expected = hf_forward(hf, batch).logits
        logits = ours(**batch)
    assert (real(logits, batch) - real(expected, batch)).abs().max() <= TOLERANCE


def test_missing_position_ids_are_computed_like_the_collator(models):
    ours, _ = models
    batch = padded_collate_qwen2_5_vl(mixed_samples()[:2], padding_side="left")
    without_positions = {k: v for k, v in batch.items() if k != "position_ids"}
    with torch.no_grad():
        assert torch.equal(real(ours(**without_positions), batch), real(ours(**batch), batch))


def test_packed_rows_keep_samples_apart(models):
    ours, _ = models
    samples = [vl_sample((("image", 8, 12),), seed=7), vl_sample(question_len=9, seed=8)]
    packed = packed_collate_qwen2_5_vl(samples, max_seq_len=256)
    assert packed["tokens"].shape[0] == 1 and packed["document_ids"].max() == 1
    alone = padded_collate_qwen2_5_vl(samples)
    with torch.no_grad():
        packed_logits = ours(**packed)[0]
        alone_logits = ours(**alone)
    for doc in range(2):
        in_doc = packed["document_ids"][0] == doc
        assert (packed_logits[in_doc] - alone_logits[doc][alone["attention_mask"][doc]]).abs().max() <= TOLERANCE


def test_generation_step_with_kv_cache_and_rope_deltas_matches_transformers(checkpoint):
    model_dir, hf = checkpoint
    ours = load_hf_model(model_dir).eval()  # its own copy: KV caches stay attached
    batch = padded_collate_qwen2_5_vl([vl_sample((("image", 12, 8),), seed=9)])
    prompt_len = batch["tokens"].shape[1]
    next_token = torch.tensor([[9707]])
    media = {k: batch[k] for k in ("pixel_values", "image_grid_thw")}
    with torch.no_grad():
        types = mm_token_type_ids(batch["tokens"])
        first = hf(input_ids=batch["tokens"], mm_token_type_ids=types, use_cache=True, **media)
        step = hf(input_ids=next_token, cache=first.cache, use_cache=True)
        ours.setup_caches(1, torch.float32, decoder_max_seq_len=prompt_len + 4)
        prompt_logits = ours(**batch)
        step_logits = ours(next_token, position_ids=next_position_ids(batch["rope_deltas"], prompt_len))
    assert batch["rope_deltas"].item() < 0  # the image span uses fewer ids than tokens
    assert (prompt_logits - first.logits).abs().max() <= TOLERANCE
    assert (step_logits[:, -1] - step.logits[:, -1]).abs().max() <= TOLERANCE


def test_pad_token_count_mismatch_names_the_counts(models):
    ours, _ = models
    batch = padded_collate_qwen2_5_vl([vl_sample((("image", 8, 8),), seed=10)])
    tokens = batch["tokens"].clone()
    tokens[0, (tokens[0] == IMAGE_PAD_ID).nonzero()[0]] = 100  # one <|image_pad|> short
    with pytest.raises(PlaceholderMismatchError, match=r"15 <\|image_pad\|> tokens .* give 16 features"):
        ours(**{**batch, "tokens": tokens})
    with pytest.raises(PlaceholderMismatchError, match="no image pixel values"):
        ours(batch["tokens"], position_ids=batch["position_ids"])


def test_vision_features_of_an_image_do_not_depend_on_the_batch(models):
    ours, _ = models
    first, second = vl_sample((("image", 16, 24),), seed=11), vl_sample((("image", 10, 6),), seed=12)
    grids = torch.cat([first["image_grid_thw"], second["image_grid_thw"]])
    with torch.no_grad():
        together = ours.visual(torch.cat([first["pixel_values"], second["pixel_values"]]), grids)
        alone = ours.visual(first["pixel_values"], first["image_grid_thw"])
    assert torch.allclose(together[: alone.shape[0]], alone, atol=1e-6)


def test_vision_attention_runs_per_window_and_per_frame_never_across_the_batch(models, monkeypatch):
    ours, _ = models
    grids = torch.tensor([[1, 16, 24], [1, 10, 6], [2, 8, 8]])
    pixels = torch.randn(int(grids.prod(-1).sum()), 1176)
    lengths = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(q, k, v, *args, **kwargs):
        lengths.append(q.shape[-2])
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording_sdpa)
    with torch.no_grad():
        ours.visual(pixels, grids)
    window_layer, full_layer = ours.visual.layers
    assert not window_layer.full_attention and full_layer.full_attention
    # Windows are 112 px = 4x4 merged tokens = 64 patches. The 16x24 image (8x12 tokens) has six
    # full windows; the 10x6 one (5x3 tokens) a 4x3-token window (48) and a 1x3 one (12); each
    # 8x8 video frame is one window. Full attention: one block per frame (384, 60, 64, 64).
    assert sorted(lengths[:3]) == [12, 48, 64] and sorted(lengths[3:]) == [60, 64, 384]


def test_bfloat16_model_runs_on_float32_pixels_and_agrees_with_float32():
    torch.manual_seed(0)
    model = qwen2_5_vl_tiny().eval()
    batch = padded_collate_qwen2_5_vl(mixed_samples()[:2])
    real_tokens = batch["attention_mask"]
    with torch.no_grad():
        full = model(**batch)[real_tokens]
        half = model.to(torch.bfloat16)(**batch)[real_tokens]
    assert torch.isfinite(half).all()
    assert (full.argmax(-1) == half.argmax(-1)).float().mean() > 0.9
