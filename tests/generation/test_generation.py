"""KV-cached generation against transformers' generate on the same weights, sampling, stops and errors."""

import pytest
import torch
from support.families import FAMILIES
from support.models_reference import hf_generate, mm_token_type_ids
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper
from support.vl_samples import vl_prompt

from qwenvl_data._constants import IMAGE_PAD_ID, PAD_ID
from qwenvl_data.collate import padded_collate_qwen2_5_vl
from qwenvl_data.generation import generate, sample_next_token
from qwenvl_data.models import family_of_model, load_hf_model, next_position_ids

NEW_TOKENS = 8


@pytest.fixture(scope="module")
def checkpoint(request, tmp_path_factory):
    """A family's tiny random transformers model (Qwen2.5-VL unless a test names another family) and its directory."""
    family = FAMILIES[getattr(request, "param", "qwen2_5_vl")]
    # Untied embeddings: with tied ones a random model mostly repeats its last token, a weak test.
    model_dir = tmp_path_factory.mktemp(f"hf_tiny_untied_{family.model_type}")
    hf = family.save_random(model_dir, tie_word_embeddings=False)
    return model_dir, hf


@pytest.fixture(scope="module")
def models(checkpoint):
    model_dir, hf = checkpoint
    return load_hf_model(model_dir).eval(), hf


def prompts(family: str = "qwen2_5_vl") -> list[dict]:
    """Rows of different lengths: an image, a video (2 frames), text only, two images and a video, in the layout of
    ``family``'s transform."""
    return [
        vl_prompt((("image", 12, 8),), seed=1, family=family),
        vl_prompt((("video", 2, 8, 12, 1.0),), question_len=20, seed=2, family=family),
        vl_prompt(question_len=5, seed=3, family=family),
        vl_prompt((("image", 8, 8), ("video", 2, 4, 8, 0.5), ("image", 4, 12)), seed=4, family=family),
    ]


@pytest.fixture(scope="module")
def left_batch(models):
    """The prompts left-padded, with our collator's positions by the model's family's rule (transformers computes
    its own in ``generate``)."""
    family = family_of_model(models[0])
    return padded_collate_qwen2_5_vl(prompts(family.model_type), padding_side="left",
                                     position_rule=family.position_rule)  # fmt: skip


@pytest.fixture(scope="module")
def greedy(models, left_batch):
    ours, hf = models
    return generate(ours, left_batch, max_new_tokens=NEW_TOKENS, stop_tokens=()), hf_generate(
        hf, left_batch, NEW_TOKENS
    )


@pytest.mark.parametrize("checkpoint", FAMILIES, indirect=True)
def test_greedy_tokens_equal_transformers_for_images_video_text_and_left_padding(greedy, left_batch):
    ours, reference = greedy
    lengths = left_batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) == 4  # every row padded differently
    assert ours.tokens.dtype == torch.long and ours.tokens.shape == (4, NEW_TOKENS)
    assert torch.equal(ours.tokens, reference)
    assert ours.lengths.tolist() == [NEW_TOKENS] * 4 and not ours.stopped.any()
    assert len({tuple(row) for row in ours.tokens.tolist()}) == 4  # the rows did not collapse to one answer


def test_each_row_alone_gives_its_batched_answer(models, greedy):
    """Also: the earlier keyword ``max_generated_tokens`` is ``max_new_tokens``."""
    ours, _ = models
    batched, _ = greedy
    for row, prompt in enumerate(prompts()[:2]):
        alone = generate(ours, padded_collate_qwen2_5_vl([prompt]), max_generated_tokens=NEW_TOKENS, stop_tokens=())
        assert torch.equal(alone.tokens[0], batched.tokens[row])


def test_the_new_token_budget_is_given_once(models, left_batch):
    ours, _ = models
    for both in ({"max_new_tokens": 2, "max_generated_tokens": 3}, {}):
        with pytest.raises(ValueError, match="set max_new_tokens .or its earlier name max_generated_tokens. once"):
            generate(ours, left_batch, **both)


def test_stop_token_ends_its_row_and_pads_it_like_transformers(models, greedy, left_batch):
    ours, hf = models
    free_run, _ = greedy
    stop = int(free_run.tokens[0, 2])  # row 0 produces it at its third step
    out = generate(ours, left_batch, max_generated_tokens=NEW_TOKENS, stop_tokens=(stop,))
    reference = hf_generate(hf, left_batch, NEW_TOKENS, eos_token_id=stop)
    assert torch.equal(out.tokens, reference)
    assert out.stopped[0] and out.lengths[0] == 3
    assert out.tokens[0, 3:].eq(PAD_ID).all()
    assert out.answers()[0] == free_run.tokens[0, :2].tolist()
    for row in range(1, 4):
        first = (out.tokens[row] == stop).nonzero()
        assert out.lengths[row] == (int(first[0]) + 1 if len(first) else out.tokens.shape[1])


def test_generation_stops_early_when_every_row_has_stopped(models, greedy):
    ours, _ = models
    free_run, _ = greedy
    batch = padded_collate_qwen2_5_vl(prompts()[2:3])
    first = int(free_run.tokens[2, 0])
    out = generate(ours, batch, max_generated_tokens=NEW_TOKENS, stop_tokens=(first,))
    assert out.tokens.tolist() == [[first]] and out.lengths.tolist() == [1] and out.stopped.tolist() == [True]
    assert out.answers() == [[]]


def test_vision_tower_runs_once_and_each_step_feeds_one_token(models, left_batch):
    ours, _ = models
    vision_inputs, step_lengths = [], []
    hooks = [
        ours.visual.register_forward_pre_hook(lambda module, args: vision_inputs.append(args[0].shape[0])),
        ours.decoder.register_forward_pre_hook(lambda module, args: step_lengths.append(args[0].shape[1])),
    ]
    try:
        generate(ours, left_batch, max_generated_tokens=5, stop_tokens=())
    finally:
        for hook in hooks:
            hook.remove()
    patches = left_batch["pixel_values"].shape[0] + left_batch["pixel_values_videos"].shape[0]
    assert vision_inputs == [patches]
    assert step_lengths == [left_batch["tokens"].shape[1]] + [1] * 4


def test_generated_image_pad_token_is_plain_text_like_transformers(checkpoint):
    """A decoding step whose token is <|image_pad|> takes its embedding, not a vision feature."""
    model_dir, hf = checkpoint
    ours = load_hf_model(model_dir).eval()
    batch = padded_collate_qwen2_5_vl([vl_prompt((("image", 8, 8),), seed=5)])
    prompt_len = batch["tokens"].shape[1]
    step_token = torch.tensor([[IMAGE_PAD_ID]])
    media = {k: batch[k] for k in ("pixel_values", "image_grid_thw")}
    with torch.no_grad():
        types = mm_token_type_ids(batch["tokens"])
        first = hf(input_ids=batch["tokens"], mm_token_type_ids=types, use_cache=True, **media)
        expected = hf(input_ids=step_token, cache=first.cache, use_cache=True).logits[:, -1]
        ours.setup_caches(1, torch.float32, decoder_max_seq_len=prompt_len + 1)
        ours(**batch)
        step = ours(step_token, position_ids=next_position_ids(batch["rope_deltas"], prompt_len))[:, -1]
    assert (step - expected).abs().max() <= 1e-4


def test_sampling_repeats_for_a_seed_and_top_k_1_is_greedy(models, greedy, left_batch):
    ours, _ = models
    free_run, _ = greedy

    def sampled(seed: int, **options) -> torch.Tensor:
        rng = torch.Generator().manual_seed(seed)
        return generate(ours, left_batch, max_generated_tokens=4, stop_tokens=(), rng=rng, **options).tokens

    first = sampled(0, temperature=1.0, top_p=0.9)
    assert torch.equal(sampled(0, temperature=1.0, top_p=0.9), first)
    assert not torch.equal(sampled(1, temperature=1.0, top_p=0.9), first)
    assert not torch.equal(first, free_run.tokens[:, :4])
    assert torch.equal(sampled(2, temperature=0.7, top_k=1), free_run.tokens[:, :4])


@pytest.mark.parametrize(("top_k", "top_p"), [(None, 0.5), (5, None), (20, 0.6), (None, 1.0)])
def test_sampled_tokens_stay_in_transformers_top_k_top_p_set(top_k, top_p):
    torch.manual_seed(0)
    logits = torch.randn(3, 50) * 3
    temperature = 0.8
    scores = logits / temperature
    if top_k is not None:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p is not None:
        scores = TopPLogitsWarper(top_p)(None, scores)
    allowed = torch.isfinite(scores)
    rng = torch.Generator().manual_seed(0)
    repeats = 400
    draws = sample_next_token(
        logits.repeat(repeats, 1), temperature=temperature, top_k=top_k, top_p=top_p, rng=rng
    ).view(repeats, 3)
    seen = torch.zeros_like(allowed)
    seen.scatter_(1, draws.t(), True)
    assert not (seen & ~allowed).any()  # nothing outside the reference's set
    small = allowed.sum(1) <= 6
    assert torch.equal(seen[small], allowed[small])  # and, where the set is small, all of it is drawn


def test_sampling_options_and_bad_batches_are_refused(models, left_batch):
    ours, _ = models
    for options, message in [
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": 1.0, "top_k": 0}, "top_k"),
        ({"temperature": 1.0, "top_p": 0.0}, "top_p"),
        ({"max_generated_tokens": 0}, "max_generated_tokens"),
        ({"max_generated_tokens": 10**6}, "max_seq_len"),
    ]:
        with pytest.raises(ValueError, match=message):
            generate(ours, left_batch, **{"max_generated_tokens": 2, **options})
    right = padded_collate_qwen2_5_vl(prompts()[1:3])
    with pytest.raises(ValueError, match=r"left-padded prompts \(rows \[1\]"):
        generate(ours, right, max_generated_tokens=2)


def test_model_mode_and_caches_are_restored(checkpoint, left_batch, greedy):
    model_dir, _ = checkpoint
    model = load_hf_model(model_dir).train()
    out = generate(model, left_batch, max_generated_tokens=3, stop_tokens=())
    assert model.training and not model.caches_are_setup()
    assert torch.equal(out.tokens, greedy[0].tokens[:, :3])  # eval mode inside, whatever the caller's mode
    model.eval().setup_caches(4, torch.float32, decoder_max_seq_len=left_batch["tokens"].shape[1] + 3)
    again = generate(model, left_batch, max_generated_tokens=3, stop_tokens=())
    assert torch.equal(again.tokens, out.tokens) and model.caches_are_setup()  # the model's own caches, reused
    with pytest.raises(ValueError, match="KV caches hold 4 rows"):
        generate(model, left_batch, max_generated_tokens=4, stop_tokens=())
