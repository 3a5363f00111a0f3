"""KV-cached generation for Qwen2.5-VL on a collated batch of left-padded prompts.

The prompt goes through the model once (vision tower included) and fills torchtune's KV caches;
each later step feeds one token per row. Generated tokens are text, so their three MRoPE ids are
equal and continue from the prompt's largest id: real prompt tokens + step + ``rope_deltas``
(transformers' rule, cache position + its rope delta, gives the same ids).
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torchtune.modules import local_kv_cache

from qwenvl_data._constants import IM_END_ID, PAD_ID
from qwenvl_data.generation._sampling import check_sampling_options, sample_next_token
from qwenvl_data.models._families import family_of_model
from qwenvl_data.models._model import Qwen2_5_VLModel, project_rows
from qwenvl_data.models._mrope import next_position_ids
from qwenvl_data.rope import mrope_position_ids

# The collator's keys the prompt pass reads; labels, rope_deltas etc. are not model inputs.
_MEDIA_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


@dataclass
class GenerationOutput:
    """What ``generate`` produced for each prompt of the batch.

    Attributes:
        tokens: int64 [B, T] generated ids, T <= ``max_new_tokens`` (less when every row
            stopped earlier). A row's stop token is kept; every position after it holds ``pad_id``.
        lengths: int64 [B], tokens each row generated, its stop token included.
        stopped: bool [B], True where the row ended with one of ``stop_tokens`` (False: it ran
            out of ``max_new_tokens``).
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    stopped: torch.Tensor

    def answers(self) -> list[list[int]]:
        """Each row's generated ids without its stop token and padding."""
        ends = (self.lengths - self.stopped.long()).tolist()
        return [row[:end] for row, end in zip(self.tokens.tolist(), ends)]


def _check_left_padded(attention_mask: torch.Tensor) -> None:
    """Every row's real tokens must end the row: new tokens are appended at the last column."""
    real = attention_mask.bool()
    bad_rows = (real[:, :-1] & ~real[:, 1:]).any(1) | ~real[:, -1]
    if bool(bad_rows.any()):
        raise ValueError(
            f"generate needs left-padded prompts (rows {bad_rows.nonzero().squeeze(1).tolist()} have padding after "
            "their tokens or no tokens); collate them with Qwen2_5_VLCollator(padding_side='left')"
        )


def _cache_slots_attended(attention_mask: torch.Tensor, cache_len: int) -> torch.Tensor:
    """bool [B, 1, cache_len]: the slots a generated token may attend to, its causal limit aside.

    That is every slot but the prompt's left padding; the token fed at step n goes into slot L + n
    and sees the slots up to its own (``slot_index <= L + n``).
    """
    after_prompt = attention_mask.new_ones(attention_mask.shape[0], cache_len - attention_mask.shape[1])
    return torch.cat([attention_mask, after_prompt], dim=1).unsqueeze(1)


@contextmanager
def _kv_caches(
    model: Qwen2_5_VLModel, batch_size: int, seq_len: int, dtype: torch.dtype, device: torch.device
) -> Iterator[None]:
    """Empty KV caches for ``batch_size`` rows of ``seq_len`` tokens: the model's own if it has them, else new ones."""
    if not model.caches_are_setup():
        with local_kv_cache(model, batch_size=batch_size, device=device, dtype=dtype, decoder_max_seq_len=seq_len):
            yield
        return
    cache = model.decoder.layers[0].attn.kv_cache
    capacity = model.decoder.decoder_max_cache_seq_len
    if cache.batch_size != batch_size or capacity < seq_len:
        raise ValueError(
            f"the model's KV caches hold {cache.batch_size} rows of {capacity} tokens; this batch needs {batch_size} "
            f"rows of {seq_len} (prompt + max_new_tokens). Delete them (torchtune.modules.delete_kv_caches) "
            "and generate sets up its own."
        )
    model.reset_caches()
    yield


def new_token_budget(max_new_tokens: int | None, max_generated_tokens: int | None, default: int | None = None) -> int:
    """The one budget of new tokens given under either name (``max_generated_tokens`` is the earlier one), else
    ``default``.

    Raises:
        ValueError: neither name and no default, or both names with different values.
    """
    given = {value for value in (max_new_tokens, max_generated_tokens) if value is not None}
    if not given and default is not None:
        return default
    if len(given) != 1:
        raise ValueError(
            f"set max_new_tokens (or its earlier name max_generated_tokens) once; got max_new_tokens={max_new_tokens}, "
            f"max_generated_tokens={max_generated_tokens}"
        )
    return int(given.pop())


@torch.no_grad()
def generate(
    model: Qwen2_5_VLModel,
    batch: dict[str, Any],
    *,
    max_new_tokens: int | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens: Sequence[int] = (IM_END_ID,),
    rng: torch.Generator | None = None,
    pad_id: int = PAD_ID,
    max_generated_tokens: int | None = None,
) -> GenerationOutput:
    """Continue every prompt of a batch, feeding one token per row per step through KV caches.

    Greedy decoding (the default) gives transformers' ``generate(do_sample=False)`` tokens on the
    same weights. The model runs in eval mode and goes back to its previous mode afterwards; KV
    caches are set up for the batch and deleted at the end (if the model already has caches of the
    right size, they are emptied and reused instead).

    Args:
        model: a ``Qwen2_5_VLModel`` (full or LoRA) on the batch's device.
        batch: prompts from ``Qwen2_5_VLCollator(padding_side="left")`` (e.g. samples of
            ``Qwen2_5_VLTransform(..., inference=True)``), on the model's device: ``tokens``,
            ``attention_mask``, the vision keys, and ``position_ids``/``rope_deltas`` (computed
            by the model's family's rule, ``family_of_model(model).position_rule``, when absent). Other keys
            (``labels``, ...) are ignored.
        max_new_tokens: new tokens per row at most (torchtune's and the generate config's name).
        temperature: 0 = greedy; above 0 = sampling (see ``sample_next_token``).
        top_k: sample among the ``top_k`` most likely tokens only.
        top_p: nucleus sampling threshold.
        stop_tokens: a row ends after generating one of these (default ``<|im_end|>``); empty = never.
        rng: ``torch.Generator`` on the model's device for sampling; a fixed seed repeats the output.
        pad_id: what fills a row after its stop token (default ``<|endoftext|>``).
        max_generated_tokens: the earlier name of ``max_new_tokens``.

    Returns:
        GenerationOutput: ``tokens`` int64 [B, T], ``lengths`` int64 [B], ``stopped`` bool [B]
        (``answers()`` gives each row's ids without stop token and padding).

    Raises:
        ValueError: right-padded or packed prompts, bad sampling options, ``max_new_tokens`` < 1 (or not
            given, or given under both names),
            prompt + new tokens longer than the model's ``max_seq_len``, or existing KV caches of
            another size.
        PlaceholderMismatchError: pad tokens and vision inputs of the prompts disagree.

    Example:
        >>> from qwenvl_data.collate import padded_collate_qwen2_5_vl
        >>> from qwenvl_data.models import qwen2_5_vl_tiny
        >>> model = qwen2_5_vl_tiny()
        >>> batch = padded_collate_qwen2_5_vl([{"tokens": [1, 2, 3]}, {"tokens": [4]}], padding_side="left")
        >>> out = generate(model, batch, max_new_tokens=4, stop_tokens=())
        >>> out.tokens.shape, out.lengths.tolist()
        (torch.Size([2, 4]), [4, 4])
    """
    check_sampling_options(temperature, top_k, top_p)
    max_new_tokens = new_token_budget(max_new_tokens, max_generated_tokens)
    if max_new_tokens < 1:
        raise ValueError(
            f"max_new_tokens (or its earlier name max_generated_tokens) must be >= 1, got {max_new_tokens}"
        )
    if batch.get("document_ids") is not None:
        raise ValueError("generate needs one prompt per row; packed batches (document_ids) cannot be continued")
    tokens = batch["tokens"]
    batch_size, prompt_len = tokens.shape
    device = tokens.device
    attention_mask = batch.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones_like(tokens, dtype=torch.bool)
    attention_mask = attention_mask.bool()
    _check_left_padded(attention_mask)
    total_len = prompt_len + max_new_tokens
    if total_len > model.decoder.max_seq_len:
        raise ValueError(
            f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
            f"max_seq_len ({model.decoder.max_seq_len})"
        )
    media = {key: batch[key] for key in _MEDIA_KEYS if batch.get(key) is not None}
    position_ids, rope_deltas = batch.get("position_ids"), batch.get("rope_deltas")
    if position_ids is None or rope_deltas is None:
        family = family_of_model(model)  # its position rule
        position_ids, rope_deltas = mrope_position_ids(
            tokens,
            media.get("image_grid_thw"),
            media.get("video_grid_thw"),
            media.get("second_per_grid_ts"),
            attention_mask,
            spatial_merge_size=family.merge_size,
            tokens_per_second=family.position_rule.tokens_per_second,
            frames_apart=family.position_rule.frames_apart,
        )
    # Every generated token is text: its ids continue from the prompt's largest one, row by row.
    step_positions = next_position_ids(rope_deltas, attention_mask.sum(1, keepdim=True), max_new_tokens)
    last_position = torch.zeros_like(attention_mask)
    last_position[:, -1] = True
    stops = torch.tensor(list(stop_tokens), dtype=torch.long, device=device)
    generated = torch.full((batch_size, max_new_tokens), pad_id, dtype=torch.long, device=device)
    done = torch.zeros(batch_size, dtype=torch.bool, device=device)

    was_training = model.training
    model.eval()
    try:
        with _kv_caches(model, batch_size, total_len, model.tok_embeddings.weight.dtype, device):
            cache_len = model.decoder.decoder_max_cache_seq_len
            attended = _cache_slots_attended(attention_mask, cache_len)
            slot_index = torch.arange(cache_len, device=device)
            with project_rows(model, last_position):  # only the last prompt position's logits are needed
                logits = model(tokens, **media, position_ids=position_ids, attention_mask=attention_mask)
            for step in range(max_new_tokens):
                next_token = sample_next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p, rng=rng)
                next_token = next_token.masked_fill(done, pad_id)
                generated[:, step] = next_token
                done |= torch.isin(next_token, stops)
                num_generated = step + 1
                if num_generated == max_new_tokens or bool(done.all()):
                    break
                positions = step_positions[:, :, step : step + 1]
                mask = attended & (slot_index <= prompt_len + step)
                logits = model(next_token[:, None], position_ids=positions, mask=mask)[:, -1]
    finally:
        model.train(was_training)

    generated = generated[:, :num_generated]
    is_stop = torch.isin(generated, stops)
    stopped = is_stop.any(1)
    lengths = torch.where(stopped, is_stop.int().argmax(1) + 1, num_generated)
    return GenerationOutput(tokens=generated, lengths=lengths, stopped=stopped)
