"""Qwen2.5-VL (and the families built as its variants): vision features placed into the token embeddings of a
torchtune ``TransformerDecoder``."""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torchtune.modules import TransformerDecoder

from qwenvl_data._constants import IMAGE_PAD_ID, TOKENS_PER_SECOND, VIDEO_PAD_ID
from qwenvl_data._input_checks import check_model_inputs
from qwenvl_data.errors import PlaceholderMismatchError
from qwenvl_data.models._packed_attention import make_packed_aware, packed_mask
from qwenvl_data.models._vision import Qwen2_5_VisionTransformer
from qwenvl_data.rope import mrope_position_ids


class Qwen2_5_VLModel(nn.Module):
    """Qwen2.5-VL on torchtune modules; takes a batch straight from ``Qwen2_5_VLCollator``.

    The token embedding lives here rather than in the decoder (whose ``tok_embeddings`` is an
    identity), because vision features must replace the ``<|image_pad|>``/``<|video_pad|>``
    embeddings before the first decoder layer. With tied embeddings the decoder's output
    projection still reads this embedding's weight.

    Args:
        tok_embeddings: token embedding [vocab, dim].
        decoder: ``TransformerDecoder`` whose attention uses ``MultimodalRotaryEmbeddings``.
        visual: the vision tower.
        tokens_per_second: temporal MRoPE ids per second of video, used when ``position_ids``
            must be computed here; None: one per temporal patch (Qwen2-VL's rule).
        trainable_modules: submodule names (e.g. ``"visual.merger"``) whose parameters LoRA
            fine-tuning trains in full. They are reported through torchtune's ``adapter_params``
            protocol, so ``get_adapter_params`` + ``set_trainable_params`` pick them up.
    """

    def __init__(
        self,
        *,
        tok_embeddings: nn.Embedding,
        decoder: TransformerDecoder,
        visual: Qwen2_5_VisionTransformer,
        tokens_per_second: int | None = TOKENS_PER_SECOND,
        trainable_modules: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.tok_embeddings = tok_embeddings
        decoder.tok_embeddings = nn.Identity()
        make_packed_aware(decoder)
        self.decoder = decoder
        self.visual = visual
        self.tokens_per_second = tokens_per_second
        self.trainable_modules = tuple(trainable_modules)

    def adapter_params(self) -> list[str]:
        """Names of the parameters trained in full next to LoRA adapters (torchtune's protocol)."""
        return [
            f"{prefix}.{name}"
            for prefix in self.trainable_modules
            for name, _ in self.get_submodule(prefix).named_parameters()
        ]

    # torchtune's recipe hooks, delegated to the decoder.
    def set_num_output_chunks(self, num_output_chunks: int) -> None:
        """See ``TransformerDecoder.set_num_output_chunks``."""
        self.decoder.set_num_output_chunks(num_output_chunks)

    def setup_caches(
        self,
        batch_size: int,
        dtype: torch.dtype,
        *,
        encoder_max_seq_len: int | None = None,
        decoder_max_seq_len: int | None = None,
    ) -> None:
        """Allocate KV caches for generation (see ``TransformerDecoder.setup_caches``).

        ``encoder_max_seq_len`` is accepted for torchtune's ``local_kv_cache`` and unused: the vision
        features enter as token embeddings, there is no cross-attention to cache.
        """
        self.decoder.setup_caches(batch_size, dtype, decoder_max_seq_len=decoder_max_seq_len)

    def caches_are_setup(self) -> bool:
        """Whether KV caches are allocated (torchtune's ``local_kv_cache`` / ``delete_kv_caches`` ask this)."""
        return self.decoder.caches_are_setup()

    def caches_are_enabled(self) -> bool:
        """Whether forward passes read and extend the KV caches."""
        return self.decoder.caches_are_enabled()

    def reset_caches(self) -> None:
        """Empty the KV caches."""
        self.decoder.reset_caches()

    def forward(
        self,
        tokens: torch.Tensor,
        *,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        **batch_extras: object,
    ) -> torch.Tensor | list[torch.Tensor]:
        """
        Args:
            tokens: int64 [B, L].
            pixel_values: float [N_img, 3 * 2 * patch**2] patches of all images, in batch order (1176; Qwen3-VL 1536).
            image_grid_thw: int64 [num_images, 3].
            pixel_values_videos: float [N_vid, same width].
            video_grid_thw: int64 [num_videos, 3].
            position_ids: int64 [3, B, L] MRoPE ids; computed by the family's rule (``self.mrope_position_ids``)
                when None.
            attention_mask: bool [B, L], True on real tokens (with KV caches: [B, cached + L] or
                [B, cache size], covering every token seen so far).
            document_ids: int64 [B, L] for packed rows: sample index inside its row, -1 on padding;
                tokens attend only within their own sample, by flex attention or varlen SDPA (the
                blocks between samples are never computed).
            second_per_grid_ts: float32 [num_videos], only used to compute missing ``position_ids``.
            mask: bool [B, L, L] (or [B, L, cache size]) attention mask, True = attend, a flex
                ``BlockMask`` or ``PackedRows``; overrides the one built from ``attention_mask``/``document_ids``
                (torchtune's convention).
            **batch_extras: other collator keys (``labels``, ``rope_deltas``, ``seq_lens``, ...),
                ignored so that ``model(**batch)`` works.

        With KV caches that already hold a prompt, ``tokens`` are generated text: without pixel
        inputs an ``<|image_pad|>`` id among them gets its plain embedding, as in transformers.

        Returns:
            float32 [B, L, vocab] logits (a list of chunks after ``set_num_output_chunks``).

        Raises:
            PlaceholderMismatchError: if the number of ``<|image_pad|>``/``<|video_pad|>`` tokens
                differs from the number of merged features the grids give.
        """
        past = self._cached_length()
        check_model_inputs(tokens, position_ids, attention_mask, {"image_grid_thw": image_grid_thw,
                           "video_grid_thw": video_grid_thw}, self.visual.merge_size, past)  # fmt: skip
        embeds = self.tok_embeddings(tokens)
        deepstack = None
        if not past or pixel_values is not None or pixel_values_videos is not None:
            embeds, deepstack = self._place_vision_features(
                embeds, tokens, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw
            )
        if position_ids is None:
            if past is not None:
                raise ValueError("position_ids are required when decoding with KV caches (see next_position_ids)")
            position_ids, _ = self.mrope_position_ids(
                tokens, image_grid_thw, video_grid_thw, second_per_grid_ts, attention_mask, document_ids
            )
        if mask is None:
            mask = self._attention_mask(tokens, attention_mask, document_ids, past)
        if deepstack is not None:  # only towers with DeepStack mergers give these (Qwen3-VL's DeepstackDecoder)
            return self.decoder(embeds, mask=mask, input_pos=position_ids, deepstack=deepstack)
        return self.decoder(embeds, mask=mask, input_pos=position_ids)

    def mrope_position_ids(
        self,
        tokens: torch.Tensor,
        image_grid_thw: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MRoPE ids of a batch by this model's family's rule (what a forward pass without ``position_ids``
        and ``generate`` without them use); arguments as for ``qwenvl_data.rope.mrope_position_ids``.

        Returns:
            (position_ids int64 [3, B, L], rope_deltas int64 [B, 1]).
        """
        from qwenvl_data.models._families import family_of_model  # the family table imports this module

        rule = family_of_model(self).position_rule
        return mrope_position_ids(
            tokens,
            image_grid_thw,
            video_grid_thw,
            second_per_grid_ts,
            attention_mask,
            document_ids=document_ids,
            spatial_merge_size=self.visual.merge_size,
            tokens_per_second=rule.tokens_per_second,
            frames_apart=rule.frames_apart,
        )

    def _place_vision_features(
        self,
        embeds: torch.Tensor,
        tokens: torch.Tensor,
        pixel_values: torch.Tensor | None,
        image_grid_thw: torch.Tensor | None,
        pixel_values_videos: torch.Tensor | None,
        video_grid_thw: torch.Tensor | None,
    ) -> tuple[torch.Tensor, "DeepstackFeatures | None"]:
        """Run images and videos through the tower in one pass and write them over their pad tokens.

        Returns:
            (embeds, deepstack): the embeddings with the features in place, and the tower's DeepStack
            features at those positions (None for towers without DeepStack, or without media).
        """
        media = [
            ("image", IMAGE_PAD_ID, "<|image_pad|>", pixel_values, image_grid_thw),
            ("video", VIDEO_PAD_ID, "<|video_pad|>", pixel_values_videos, video_grid_thw),
        ]
        patches, grids, slots = [], [], []
        for kind, pad_id, pad_name, values, grid in media:
            is_pad = tokens == pad_id
            num_pads = int(is_pad.sum())
            if values is None:
                if num_pads:
                    raise PlaceholderMismatchError(
                        f"batch: {num_pads} {pad_name} tokens (per row {is_pad.sum(1).tolist()}) "
                        f"but no {kind} pixel values"
                    )
                continue
            if grid is None:
                raise ValueError(f"batch: {kind} pixel values given without their grid_thw")
            grid = grid.reshape(-1, 3)
            num_features = int(grid.prod(-1).sum()) // self.visual.merge_size**2
            if num_pads != num_features:
                raise PlaceholderMismatchError(
                    f"batch: {num_pads} {pad_name} tokens (per row {is_pad.sum(1).tolist()}) but "
                    f"{grid.shape[0]} {kind}(s) with grids {grid.tolist()} give {num_features} features"
                )
            patches.append(values)
            grids.append(grid)
            slots.append(is_pad)
        if not patches:
            if _ranks_in_lockstep():  # another rank may run the tower now: issue the same collectives
                return embeds + self.visual.idle_pass(embeds.device).to(embeds.dtype), None
            return embeds, None
        features, deepstack = self.visual(torch.cat(patches), torch.cat(grids), with_deepstack=True)
        # Images first, then videos: the order they were concatenated in above.
        positions = torch.cat([slot.reshape(-1).nonzero().squeeze(1) for slot in slots])
        flat = embeds.reshape(-1, embeds.shape[-1]).index_copy(0, positions, features.to(embeds.dtype))
        if not deepstack:
            return flat.view_as(embeds), None
        return flat.view_as(embeds), DeepstackFeatures(positions, [f.to(embeds.dtype) for f in deepstack])

    def _attention_mask(
        self,
        tokens: torch.Tensor,
        attention_mask: torch.Tensor | None,
        document_ids: torch.Tensor | None,
        past: int | None,
    ) -> object:
        """Causal mask combined with padding, or None when plain causal suffices; for packed rows
        (``document_ids``) the layout the fast kernels read (``packed_mask``: a flex BlockMask on GPUs,
        varlen ``PackedRows`` elsewhere), never a dense [B, L, L] tensor.

        Right padding needs no mask: causal attention already keeps real tokens from the padding
        after them, and SDPA's causal path is the fast one without a [B, L, L] mask.
        Every token may attend to itself, so padding rows get finite (ignored) values instead of
        the NaNs an all-masked softmax gives, which would leak into gradients.
        """
        batch_size, seq_len = tokens.shape
        if document_ids is not None:
            if past is not None:
                raise ValueError("packed batches (document_ids) cannot be decoded with KV caches")
            return packed_mask(document_ids)
        if past is None:
            if attention_mask is None:
                return None
            real_after_padding = attention_mask[:, 1:].bool() & ~attention_mask[:, :-1].bool()
            if not bool(real_after_padding.any()):
                return None
        device = tokens.device
        total = seq_len if past is None else self.decoder.decoder_max_cache_seq_len
        query_pos = torch.arange(seq_len, device=device) + (past or 0)
        key_pos = torch.arange(total, device=device)
        allowed = (key_pos[None, :] <= query_pos[:, None]).expand(batch_size, seq_len, total)
        if attention_mask is not None:
            key_valid = attention_mask.to(device=device, dtype=torch.bool)
            if key_valid.shape[1] < total:  # cache slots not filled yet
                key_valid = torch.nn.functional.pad(key_valid, (0, total - key_valid.shape[1]), value=False)
            allowed = allowed & key_valid[:, None, :]
        return allowed | (key_pos[None, :] == query_pos[:, None])

    def _cached_length(self) -> int | None:
        """Tokens already in the KV caches, or None when caches are off."""
        if not self.caches_are_enabled():
            return None
        return int(self.decoder.layers[0].attn.kv_cache.size)


@dataclass(frozen=True)
class DeepstackFeatures:
    """Qwen3-VL's DeepStack input to the decoder: extra vision features added to the hidden states of
    the vision tokens after each of the first ``len(features)`` decoder layers.

    Attributes:
        positions: int64 [N], flat indices (row * L + column) of the vision tokens in the batch.
        features: one float [N, dim] tensor per DeepStack layer, rows in the order of ``positions``.
    """

    positions: torch.Tensor
    features: list[torch.Tensor]

    def add_to(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """``hidden`` [B, L, dim] with layer ``layer``'s features added at the vision positions (out of place)."""
        flat = hidden.reshape(-1, hidden.shape[-1]).index_add(0, self.positions, self.features[layer])
        return flat.view_as(hidden)


def _ranks_in_lockstep() -> bool:
    """Whether this process is one of several ranks whose forward passes must issue the same collectives."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextmanager
def project_rows(model: Qwen2_5_VLModel, rows: torch.Tensor) -> Iterator[None]:
    """Within the block, ``model(...)`` returns logits [N, vocab] for the ``rows`` positions only.

    The 151,936-wide output projection dominates a forward pass when few positions are read (the
    trained ones in training, the last one when a prompt is prefilled), so a forward hook on the
    final decoder norm keeps only the selected rows before the projection sees them (under FSDP2
    too: the hook runs inside the root module's forward, with the weights gathered).

    Args:
        model: a Qwen2_5_VLModel (its ``decoder.norm`` precedes the output projection).
        rows: bool [B, L], True at the positions whose logits are wanted; N = rows.sum(), row-major.
    """
    handle = model.decoder.norm.register_forward_hook(lambda module, args, output: output[rows])
    try:
        yield
    finally:
        handle.remove()
