"""What Qwen3-VL's model adds to Qwen2.5-VL's: QK-norm attention, a decoder that takes DeepStack features,
and its position rule (each video frame is its own vision span)."""

import torch
from torchtune.modules import MultiHeadAttention, TransformerDecoder

from qwenvl_data.models._model import DeepstackFeatures, Qwen2_5_VLModel


class QKNormAttention(MultiHeadAttention):
    """torchtune's ``MultiHeadAttention`` (GQA, KV cache, the packed-aware attention call) in Qwen3's order:
    ``q_norm`` / ``k_norm`` (RMSNorm over each head) BEFORE the rotary embedding.

    torchtune normalizes after the rotation; the two differ because the norm's per-dimension scale does
    not commute with rotating pairs of dimensions. Same arguments as ``MultiHeadAttention``;
    ``pos_embeddings``, ``q_norm`` and ``k_norm`` are required. Self-attention only.
    """

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        mask: object = None,
        input_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            x: float [B, S, embed_dim].
            y: the same tensor as ``x`` (torchtune's self-attention layer passes it twice).
            mask: as for ``MultiHeadAttention``.
            input_pos: position ids for the rotary embedding ([3, B, S] MRoPE ids).

        Returns:
            float [B, S, embed_dim].
        """
        if y is None:
            raise ValueError("QKNormAttention is self-attention: pass the input as y too")
        batch, seq_len, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(batch, seq_len, self.num_heads, self.head_dim))
        k = self.k_norm(self.k_proj(y).view(batch, seq_len, self.num_kv_heads, self.head_dim))
        v = self.v_proj(y).view(batch, seq_len, self.num_kv_heads, self.head_dim)
        q = self.pos_embeddings(q, input_pos=input_pos).transpose(1, 2)
        k = self.pos_embeddings(k, input_pos=input_pos).transpose(1, 2)
        v = v.transpose(1, 2)
        if self.kv_cache is not None and self.cache_enabled:
            k, v = self.kv_cache.update(k, v)
        if self.num_heads != self.num_kv_heads:
            groups = self.num_heads // self.num_kv_heads
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        out = self._attention_call(
            q,
            k,
            v,
            mask=mask,
            dropout_p=self.attn_dropout if self.training else 0.0,
            is_causal=self.kv_cache is None and mask is None and self.is_causal,
        )
        return self.output_proj(out.transpose(1, 2).reshape(batch, seq_len, -1))


class DeepstackDecoder(TransformerDecoder):
    """torchtune's ``TransformerDecoder`` that adds DeepStack vision features to the hidden states of the
    vision tokens after each of its first layers (Qwen3-VL); without them it is the plain decoder.

    The addition sits between the layers, outside each layer's module, so activation checkpointing,
    ``torch.compile`` and FSDP2 units (which all work per layer) see the layers unchanged.
    """

    def forward(
        self,
        tokens: torch.Tensor,
        *,
        mask: object = None,
        input_pos: torch.Tensor | None = None,
        deepstack: DeepstackFeatures | None = None,
        **kwargs: object,
    ) -> torch.Tensor | list[torch.Tensor]:
        """
        Args:
            tokens: float [B, L, dim] embeddings (the model's ``tok_embeddings`` is an identity here).
            mask, input_pos: as for ``TransformerDecoder``.
            deepstack: features added after layers 0 .. len(deepstack.features) - 1; None: none.
            **kwargs: ``TransformerDecoder`` 's other arguments, only without ``deepstack``.

        Returns:
            float32 [B, L, vocab] logits (a list of chunks after ``set_num_output_chunks``).

        Raises:
            ValueError: more DeepStack layers than decoder layers.
        """
        if deepstack is None:
            return super().forward(tokens, mask=mask, input_pos=input_pos, **kwargs)
        if len(deepstack.features) > len(self.layers):
            raise ValueError(f"{len(deepstack.features)} DeepStack layers but {len(self.layers)} decoder layers")
        self._validate_inputs(tokens.shape[1], mask=mask, input_pos=input_pos)
        hidden = self.tok_embeddings(tokens)
        for index, layer in enumerate(self.layers):
            hidden = layer(hidden, mask=mask, input_pos=input_pos)
            if index < len(deepstack.features):
                hidden = deepstack.add_to(hidden, index)
        return self.unembed(hidden)


class Qwen3VLModel(Qwen2_5_VLModel):
    """Qwen3-VL on torchtune modules; takes a batch from the collator via ``model(**batch)``.

    Everything is ``Qwen2_5_VLModel``'s (embeddings, vision placement, masks, KV cache, idle vision pass);
    the decoder is a ``DeepstackDecoder`` of ``QKNormAttention`` layers with interleaved MRoPE, and the
    tower has DeepStack mergers. ``video_grid_thw`` is per video ([T, h, w], as transformers' processor
    gives it): the tower attends within each frame, and the chat template puts a timestamp and its own
    ``<|vision_start|>``...``<|vision_end|>`` around every frame's pad tokens.

    Position ids computed here (when the batch has none) follow Qwen3-VL's rule: every temporal patch of
    a video is a vision span of its own (t = 1), text after a span starts at its start + max(rows, cols);
    no seconds enter the ids (the timestamps are text).
    """

    model_type = "qwen3_vl"  # its family (``family_of_model``)
