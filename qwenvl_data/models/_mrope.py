"""Rotary embeddings in the "rotate half" layout that Qwen's checkpoints were trained with.

torchtune's own RoPE rotates interleaved pairs; using it would force a permutation of every q/k
projection at load time. Both towers here rotate the two halves of each head instead, so HF
weights load unchanged.
"""

import torch
from torch import nn


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` by the angles whose cosine/sine are given, pairing dim i with dim i + d/2.

    Args:
        x: float [..., d].
        cos: float, broadcastable to ``x``.
        sin: float, broadcastable to ``x``.

    Returns:
        float [..., d], same dtype as ``x``.
    """
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat((-second, first), dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class MultimodalRotaryEmbeddings(nn.Module):
    """MRoPE: each frequency band of a head follows one of the (temporal, height, width) position ids.

    Chunked (Qwen2-VL, Qwen2.5-VL): the first ``mrope_section[0]`` frequencies rotate with the temporal
    id, the next ``mrope_section[1]`` with the height id and the last ``mrope_section[2]`` with the width
    id. Interleaved (Qwen3-VL): frequency i follows height when i % 3 == 1 and i < 3 * mrope_section[1],
    width when i % 3 == 2 and i < 3 * mrope_section[2], time otherwise (T H W T H W ... T T), so every
    axis spans high and low frequencies. Text tokens carry three equal ids, which makes either ordinary
    1-D RoPE for them.

    It plugs into torchtune's ``MultiHeadAttention`` as ``pos_embeddings``: the attention passes
    its ``input_pos`` through, which here is the collator's ``position_ids``. One instance is
    shared by all layers, and the cos/sin of the last ``input_pos`` are reused so a forward pass
    computes them once instead of twice per layer.

    Args:
        dim: head dimension (128 for all released sizes).
        mrope_section: frequencies per axis, summing to ``dim // 2`` (``[16, 24, 24]`` released;
            Qwen3-VL ``[24, 20, 20]``).
        base: RoPE theta (1e6 released; Qwen3-VL 5e6).
        interleaved: the axes take turns across the frequencies (Qwen3-VL's ``mrope_interleaved``).

    Example:
        >>> rope = MultimodalRotaryEmbeddings(dim=8, mrope_section=[2, 1, 1])
        >>> q = torch.randn(1, 5, 2, 8)
        >>> rope(q, input_pos=torch.arange(5).expand(3, 1, 5)).shape
        torch.Size([1, 5, 2, 8])
    """

    def __init__(
        self, dim: int, mrope_section: list[int], base: float = 1_000_000.0, *, interleaved: bool = False
    ) -> None:
        super().__init__()
        if dim % 2 or sum(mrope_section) != dim // 2:
            raise ValueError(f"mrope_section {list(mrope_section)} must sum to head_dim // 2 = {dim // 2}")
        if interleaved and 3 * max(mrope_section[1:]) > dim // 2:
            raise ValueError(f"interleaved mrope_section {list(mrope_section)}: height/width take every third "
                             f"of {dim // 2} frequencies, at most {dim // 6} each")  # fmt: skip
        self.dim = dim
        self.mrope_section = list(mrope_section)
        self.base = base
        self.interleaved = interleaved
        self._cached: tuple[torch.Tensor, int, torch.Tensor, torch.Tensor] | None = None
        self.rope_init()

    def rope_init(self) -> None:
        """(Re)build the frequency buffers; torchtune recipes call this after meta-device init."""
        inv_freq = 1.0 / (self.base ** (torch.arange(0, self.dim, 2, dtype=torch.float32) / self.dim))
        if self.interleaved:
            freq = torch.arange(self.dim // 2)
            axis_of_freq = torch.zeros_like(freq)
            for axis in (1, 2):
                axis_of_freq[(freq % 3 == axis) & (freq < 3 * self.mrope_section[axis])] = axis
        else:
            axis_of_freq = torch.tensor([axis for axis, size in enumerate(self.mrope_section) for _ in range(size)])
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("axis_of_freq", axis_of_freq, persistent=False)
        self._cached = None

    def _cos_sin(self, input_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Under torch.compile the identity cache would only cause guards and recompiles; the
        # compiler fuses the recomputation instead.
        compiling = torch.compiler.is_compiling()
        cached = self._cached
        if not compiling and cached is not None and cached[0] is input_pos and cached[1] == input_pos._version:
            return cached[2], cached[3]
        # [3, B, S] -> [B, S, dim/2]: the id of the axis each frequency follows, times that frequency.
        positions = input_pos.index_select(0, self.axis_of_freq.to(input_pos.device)).permute(1, 2, 0)
        angles = positions.float() * self.inv_freq.to(input_pos.device)
        angles = torch.cat((angles, angles), dim=-1)
        cos, sin = angles.cos(), angles.sin()
        if not compiling:
            self._cached = (input_pos, input_pos._version, cos, sin)
        return cos, sin

    def forward(self, x: torch.Tensor, *, input_pos: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            x: float [B, S, num_heads, head_dim] queries or keys.
            input_pos: int64 [3, B, S] (temporal, height, width) position ids; [B, S] means the
                same id on all three axes (text); None means 0..S-1.

        Returns:
            float [B, S, num_heads, head_dim], same dtype as ``x``.
        """
        batch_size, seq_len = x.shape[:2]
        if input_pos is None:
            input_pos = torch.arange(seq_len, device=x.device).expand(3, batch_size, seq_len)
        elif input_pos.dim() == 2:
            input_pos = input_pos.unsqueeze(0).expand(3, -1, -1)
        if input_pos.shape[0] != 3 or input_pos.shape[-1] != seq_len:
            raise ValueError(f"position ids must be [3, B, {seq_len}], got {tuple(input_pos.shape)}")
        cos, sin = self._cos_sin(input_pos)
        return apply_rotary(x, cos.unsqueeze(2), sin.unsqueeze(2))


def next_position_ids(rope_deltas: torch.Tensor, num_past_tokens: int | torch.Tensor, num_new: int = 1) -> torch.Tensor:
    """MRoPE ids of tokens generated after a prompt: text ids shifted by the prompt's ``rope_deltas``.

    After the prompt every token is text, so its three ids are equal: its index among the real
    tokens so far plus ``rope_deltas`` (which accounts for vision spans using fewer ids than tokens).

    Args:
        rope_deltas: int64 [B, 1] from ``mrope_position_ids`` on the prompt.
        num_past_tokens: real (non-padding) tokens before the new ones: an int (the cache length
            when nothing is padded) or int64 [B, 1] per row.
        num_new: tokens fed in this step.

    Returns:
        int64 [3, B, num_new].

    Example:
        >>> next_position_ids(torch.tensor([[-3]]), 10).tolist()
        [[[7]], [[7]], [[7]]]
    """
    offsets = torch.arange(num_new, device=rope_deltas.device).view(1, -1)
    positions = offsets + num_past_tokens + rope_deltas
    return positions.unsqueeze(0).expand(3, -1, -1)
