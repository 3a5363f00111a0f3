"""The Qwen-VL vision towers: patch embedding, window/full attention blocks, 2x2 patch merger; for Qwen3-VL
also a learned (interpolated) position embedding and DeepStack mergers on intermediate blocks.

Images of one batch arrive as one flat sequence of patches (``pixel_values`` [N, 1176]) plus their
grids. Attention never spans two frames, and most layers only attend inside 112-pixel windows,
so attention runs on those blocks alone: blocks of equal length are stacked and go through one
SDPA call. Memory grows with the number of patches, not with its square.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchtune.modules import FeedForward, RMSNorm

from qwenvl_data.models._mrope import apply_rotary

# The released vision towers use RoPE theta 10000 for their 2-D rotary embedding.
VISION_ROPE_BASE = 10_000.0


class AttentionBlocks:
    """Which patches attend to each other: a partition of the sequence into blocks.

    Attention works on the sequence reordered so that blocks of equal length sit next to each
    other: each such run is one batched SDPA call on a view, and the reordering costs one gather
    of the layer input and one of its output.

    Args:
        keys: int64 [N], the block of each patch (any ids; equal id = same block).
        cos, sin: float32 [N, head_dim] rotary tables in sequence order.
    """

    def __init__(self, keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
        _, block_of_patch, block_lengths = torch.unique(keys, return_inverse=True, return_counts=True)
        length_of_patch = block_lengths[block_of_patch]
        # Sort by (block length, block): equal-length blocks become one contiguous run.
        self.order = torch.argsort(length_of_patch * (block_lengths.numel() + 1) + block_of_patch, stable=True)
        self.inverse = torch.argsort(self.order)
        lengths, counts = torch.unique(block_lengths, return_counts=True)
        self.runs = list(zip(counts.tolist(), lengths.tolist()))  # (blocks, length), in sequence order
        self.cos, self.sin = cos[self.order], sin[self.order]


def _frame_keys(grid_thw: torch.Tensor) -> torch.Tensor:
    """Full attention: every frame (every image, every temporal patch of a video) is one block."""
    frame_sizes = torch.repeat_interleave(grid_thw[:, 1] * grid_thw[:, 2], grid_thw[:, 0])
    return torch.repeat_interleave(torch.arange(frame_sizes.numel(), device=grid_thw.device), frame_sizes)


def _window_keys(grid_thw: torch.Tensor, merge_size: int, window_units: int) -> torch.Tensor:
    """Window attention: squares of ``window_units`` x ``window_units`` merged tokens per frame.

    Patches come in merge-block-major order (the 4 patches of a merged token are consecutive),
    so patch p of a frame belongs to merged token p // merge_size**2.
    """
    keys = []
    first_key = 0
    for t, h, w in grid_thw.tolist():
        units_w = w // merge_size
        windows_h = -(-(h // merge_size) // window_units)
        windows_w = -(-units_w // window_units)
        unit = torch.arange(h * w, device=grid_thw.device) // (merge_size * merge_size)
        window = (unit // units_w // window_units) * windows_w + (unit % units_w) // window_units
        frame = torch.arange(t, device=grid_thw.device).repeat_interleave(h * w)
        keys.append(first_key + frame * (windows_h * windows_w) + window.repeat(t))
        first_key += t * windows_h * windows_w
    return torch.cat(keys)


def patch_rows_cols(grid_thw: torch.Tensor, merge_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column of every patch in its frame, in the towers' sequence order.

    Patches come merge-block-major (the merge_size x merge_size patches of one LM token are
    consecutive), and every temporal patch of a video repeats its frame's layout.

    Args:
        grid_thw: int64 [num_items, 3] patch grids.
        merge_size: patches merged per side.

    Returns:
        (rows, cols): int64 [N] each.
    """
    m = merge_size
    rows, cols = [], []
    for t, h, w in grid_thw.tolist():
        patch = torch.arange(h * w, device=grid_thw.device)
        unit, inside = patch // (m * m), patch % (m * m)
        units_w = w // m
        rows.append(((unit // units_w) * m + inside // m).repeat(t))
        cols.append(((unit % units_w) * m + inside % m).repeat(t))
    return torch.cat(rows), torch.cat(cols)


class VisionRotaryEmbeddings(nn.Module):
    """2-D RoPE: the first half of each head's frequencies follow the patch row, the second the column.

    Args:
        head_dim: vision attention head dimension (80 released).
        merge_size: patches merged per side (2), which fixes the patch order inside an image.
        base: RoPE theta.
    """

    def __init__(self, head_dim: int, merge_size: int, base: float = VISION_ROPE_BASE) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.merge_size = merge_size
        self.base = base
        self.rope_init()

    def rope_init(self) -> None:
        """(Re)build the frequency buffer; torchtune recipes call this after meta-device init."""
        half = self.head_dim // 2
        inv_freq = 1.0 / (self.base ** (torch.arange(0, half, 2, dtype=torch.float32) / half))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, grid_thw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            grid_thw: int64 [num_items, 3] patch grids.

        Returns:
            (cos, sin): float32 [N, head_dim] each, one row per patch in sequence order.
        """
        rows, cols = patch_rows_cols(grid_thw, self.merge_size)
        inv_freq = self.inv_freq.to(grid_thw.device)
        angles = torch.cat((rows[:, None].float() * inv_freq, cols[:, None].float() * inv_freq), dim=-1)
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos(), angles.sin()


class InterpolatedPositionEmbedding(nn.Embedding):
    """Qwen3-VL's learned absolute position embedding: a square side x side table, bilinearly resampled
    (corners aligned) to each frame's patch grid and added to the patch embeddings.

    Args:
        num_embeddings: table size, a square (2304 = 48 x 48 released).
        dim: vision hidden size.
        merge_size: patches merged per side (fixes the patch order, see ``patch_rows_cols``).

    Raises:
        ValueError: if ``num_embeddings`` is not a square.
    """

    def __init__(self, num_embeddings: int, dim: int, merge_size: int) -> None:
        super().__init__(num_embeddings, dim)
        self.side = math.isqrt(num_embeddings)
        if self.side * self.side != num_embeddings:
            raise ValueError(f"num_position_embeddings {num_embeddings} is not a square grid")
        self.merge_size = merge_size

    def for_grids(self, grid_thw: torch.Tensor) -> torch.Tensor:
        """
        Args:
            grid_thw: int64 [num_items, 3] patch grids.

        Returns:
            float32 [N, dim], one row per patch in sequence order (the interpolation runs in float32).
        """
        rows, cols = patch_rows_cols(grid_thw, self.merge_size)
        heights = torch.repeat_interleave(grid_thw[:, 1], grid_thw.prod(-1))
        widths = torch.repeat_interleave(grid_thw[:, 2], grid_thw.prod(-1))
        row_taps, row_weights = self._taps(rows, heights)
        col_taps, col_weights = self._taps(cols, widths)
        indices = (row_taps[:, :, None] * self.side + col_taps[:, None, :]).flatten(1)
        weights = (row_weights[:, :, None] * col_weights[:, None, :]).flatten(1)
        return (self(indices) * weights[:, :, None]).sum(1)

    def _taps(self, index: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two table rows around each patch's position on one axis, and their linear weights [N, 2]."""
        source = index.float() * (self.side - 1) / (size - 1).clamp(min=1)
        below = source.floor()
        taps = below[:, None] + torch.arange(2, device=index.device)
        weights = (1 - (source[:, None] - taps).abs()).clamp(min=0)
        return taps.long().clamp(max=self.side - 1), weights


class VisionAttention(nn.Module):
    """Bidirectional multi-head attention restricted to blocks (frames or windows), with 2-D RoPE.

    Args:
        dim: vision hidden size.
        num_heads: attention heads.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"vision hidden size {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv_proj = nn.Linear(dim, 3 * dim, bias=True)
        self.output_proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor, blocks: AttentionBlocks) -> torch.Tensor:
        """
        Args:
            x: float [N, dim].
            blocks: which patches attend to each other, with their rotary tables.

        Returns:
            float [N, dim].
        """
        n = x.shape[0]
        q, k, v = self.qkv_proj(x[blocks.order]).view(n, 3, self.num_heads, self.head_dim).unbind(1)
        cos, sin = blocks.cos[:, None], blocks.sin[:, None]
        q = apply_rotary(q.float(), cos, sin).to(x.dtype)
        k = apply_rotary(k.float(), cos, sin).to(x.dtype)
        outputs, start = [], 0
        for count, length in blocks.runs:
            end = start + count * length
            # [blocks, length, heads, head_dim] -> [blocks, heads, length, head_dim], views only
            q_b, k_b, v_b = (
                t[start:end].view(count, length, self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v)
            )
            out = F.scaled_dot_product_attention(q_b, k_b, v_b)
            outputs.append(out.transpose(1, 2).reshape(count * length, -1))
            start = end
        out = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
        return self.output_proj(out)[blocks.inverse]


class VisionBlock(nn.Module):
    """Pre-norm transformer block of the vision tower (RMSNorm, attention, gated SiLU MLP).

    Args:
        dim: hidden size.
        num_heads: attention heads.
        intermediate_dim: MLP hidden size.
        full_attention: attend across the whole frame instead of within windows.
        norm_eps: RMSNorm epsilon.
        sa_norm, mlp_norm, mlp: other families' norms and MLP (Qwen2-VL: LayerNorm, QuickGELU
            fc1/fc2); None builds Qwen2.5-VL's.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        intermediate_dim: int,
        full_attention: bool,
        norm_eps: float = 1e-6,
        *,
        sa_norm: nn.Module | None = None,
        mlp_norm: nn.Module | None = None,
        mlp: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.full_attention = full_attention
        self.sa_norm = sa_norm if sa_norm is not None else RMSNorm(dim, eps=norm_eps)
        self.attn = VisionAttention(dim, num_heads)
        self.mlp_norm = mlp_norm if mlp_norm is not None else RMSNorm(dim, eps=norm_eps)
        self.mlp = mlp if mlp is not None else FeedForward(
            gate_proj=nn.Linear(dim, intermediate_dim, bias=True),
            down_proj=nn.Linear(intermediate_dim, dim, bias=True),
            up_proj=nn.Linear(dim, intermediate_dim, bias=True),
        )

    def forward(self, x: torch.Tensor, frames: AttentionBlocks, windows: AttentionBlocks) -> torch.Tensor:
        """
        Args:
            x: float [N, dim].
            frames: per-frame blocks (used by full-attention blocks).
            windows: per-window blocks (used by the others).

        Returns:
            float [N, dim].
        """
        h = x + self.attn(self.sa_norm(x), frames if self.full_attention else windows)
        return h + self.mlp(self.mlp_norm(h))


class PatchMerger(nn.Module):
    """Concatenates each 2x2 block of patches and projects it to the language model's width.

    Args:
        dim: vision hidden size.
        out_dim: language model hidden size.
        merge_size: patches merged per side.
        norm_eps: RMSNorm epsilon.
        norm: another family's norm (Qwen2-VL, Qwen3-VL: LayerNorm); None builds Qwen2.5-VL's RMSNorm.
        norm_after_shuffle: normalize the concatenated merge block (width dim * merge_size**2) instead of
            each patch (Qwen3-VL's DeepStack mergers).
    """

    def __init__(
        self,
        dim: int,
        out_dim: int,
        merge_size: int = 2,
        norm_eps: float = 1e-6,
        *,
        norm: nn.Module | None = None,
        norm_after_shuffle: bool = False,
    ) -> None:
        super().__init__()
        merged_dim = dim * merge_size * merge_size
        self.merged_dim = merged_dim
        self.norm_after_shuffle = norm_after_shuffle
        self.norm = norm if norm is not None else RMSNorm(dim, eps=norm_eps)
        self.fc1 = nn.Linear(merged_dim, merged_dim, bias=True)
        self.fc2 = nn.Linear(merged_dim, out_dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: float [N, dim], patches in merge-block-major order.

        Returns:
            float [N / merge_size**2, out_dim].
        """
        if self.norm_after_shuffle:
            merged = self.norm(x.view(-1, self.merged_dim))
        else:
            merged = self.norm(x).view(-1, self.merged_dim)
        return self.fc2(F.gelu(self.fc1(merged)))


class Qwen2_5_VisionTransformer(nn.Module):
    """Vision tower: ``pixel_values`` [N, C * T * P * P] + grids -> one LM-width feature per 2x2 patches.

    The tower of every Qwen-VL family; Qwen3-VL's adds a learned position embedding after the patch
    embedding and DeepStack: the outputs of chosen blocks, each through its own merger, which the
    language model adds to its first layers' hidden states (``forward(..., with_deepstack=True)``).

    Args:
        patch_embed: linear map of a flattened (3, 2, P, P) patch to the hidden size (the
            released Conv3d, whose kernel equals its stride, is exactly this; with its bias in Qwen3-VL).
        layers: ``VisionBlock`` s.
        merger: ``PatchMerger``.
        rope: ``VisionRotaryEmbeddings``.
        patch_size: spatial patch size in pixels (14; 16 for Qwen3-VL).
        temporal_patch_size: frames per patch (2).
        merge_size: patches merged per side (2).
        window_size: attention window side in pixels (112); None for a tower without windows
            (Qwen2-VL, Qwen3-VL), whose blocks must all attend across whole frames.
        pos_embed: Qwen3-VL's ``InterpolatedPositionEmbedding``; None: no absolute position embedding.
        deepstack_layers: blocks whose outputs feed ``deepstack_mergers`` (``deepstack_visual_indexes``).
        deepstack_mergers: one ``PatchMerger`` per entry of ``deepstack_layers``.

    Raises:
        ValueError: blocks without full attention in a tower without windows, or DeepStack layers out of
            range, repeated, or not one per merger.
    """

    def __init__(
        self,
        *,
        patch_embed: nn.Linear,
        layers: nn.ModuleList,
        merger: PatchMerger,
        rope: VisionRotaryEmbeddings,
        patch_size: int,
        temporal_patch_size: int,
        merge_size: int,
        window_size: int | None,
        pos_embed: InterpolatedPositionEmbedding | None = None,
        deepstack_layers: Sequence[int] = (),
        deepstack_mergers: nn.ModuleList | None = None,
    ) -> None:
        super().__init__()
        if window_size is None and not all(layer.full_attention for layer in layers):
            raise ValueError("a vision tower without window_size needs full attention in every block")
        num_mergers = 0 if deepstack_mergers is None else len(deepstack_mergers)
        bad = [i for i in deepstack_layers if not 0 <= i < len(layers)]
        if bad or len(set(deepstack_layers)) != len(deepstack_layers) or num_mergers != len(deepstack_layers):
            raise ValueError(
                f"deepstack_layers {list(deepstack_layers)} must be distinct blocks of {len(layers)}, one per "
                f"DeepStack merger ({num_mergers})"
            )
        self.patch_embed = patch_embed
        self.pos_embed = pos_embed
        self.layers = layers
        self.merger = merger
        self.deepstack_layers = tuple(deepstack_layers)
        self.deepstack_mergers = deepstack_mergers
        self.rope = rope
        self.patch_size = patch_size
        self.temporal_patch_size = temporal_patch_size
        self.merge_size = merge_size
        self.window_size = window_size

    @property
    def full_attention_layers(self) -> list[int]:
        """Indexes of the blocks attending across whole frames (``fullatt_block_indexes``)."""
        return [i for i, layer in enumerate(self.layers) if layer.full_attention]

    @property
    def merger_modules(self) -> tuple[str, ...]:
        """Names (under the tower) of the modules that project to the language model: the merger and each
        DeepStack merger; LoRA fine-tuning trains them in full (``train_merger``)."""
        return ("merger", *(f"deepstack_mergers.{i}" for i in range(len(self.deepstack_layers))))

    def forward(
        self, pixel_values: torch.Tensor, grid_thw: torch.Tensor, *, with_deepstack: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """
        Args:
            pixel_values: float [N, 3 * temporal_patch_size * patch_size**2] patches of all items,
                in the order of ``grid_thw``.
            grid_thw: int64 [num_items, 3] (t, h, w) patch grid of each image or video.
            with_deepstack: also return the DeepStack features.

        Returns:
            float [N / merge_size**2, out_dim] merged features, in patch order; with ``with_deepstack``
            (features, deepstack): deepstack holds one such tensor per DeepStack layer (an empty list for
            towers without DeepStack).

        Raises:
            ValueError: if the grids do not account for exactly N patches, or a grid side is not
                a multiple of ``merge_size``.
        """
        grid_thw = grid_thw.reshape(-1, 3).to(pixel_values.device)
        expected = int(grid_thw.prod(-1).sum())
        if expected != pixel_values.shape[0]:
            raise ValueError(
                f"grid_thw {grid_thw.tolist()} describes {expected} patches but pixel_values has "
                f"{pixel_values.shape[0]} rows"
            )
        if bool((grid_thw[:, 1:] % self.merge_size != 0).any()):
            raise ValueError(f"grid_thw {grid_thw.tolist()}: h and w must be multiples of {self.merge_size}")
        cos, sin = self.rope(grid_thw)
        frames = AttentionBlocks(_frame_keys(grid_thw), cos, sin)
        windows = frames
        if self.window_size is not None:
            window_units = self.window_size // self.merge_size // self.patch_size
            windows = AttentionBlocks(_window_keys(grid_thw, self.merge_size, window_units), cos, sin)
        h = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))
        if self.pos_embed is not None:
            h = h + self.pos_embed.for_grids(grid_thw).to(h.dtype)
        deepstack = []
        for index, layer in enumerate(self.layers):
            h = layer(h, frames, windows)
            if index in self.deepstack_layers:
                deepstack.append(self.deepstack_mergers[self.deepstack_layers.index(index)](h))
        features = self.merger(h)
        return (features, deepstack) if with_deepstack else features

    def idle_pass(self, device: torch.device) -> torch.Tensor:
        """A float32 zero computed from every tower and merger parameter, for a rank whose batch has no media.

        Under FSDP2 every rank must issue the same all-gathers (forward) and reduce-scatters (backward):
        a rank that skipped the tower while another ran it would desynchronize the collectives. Adding
        this zero to the embeddings runs the tower (DeepStack mergers included) on one frame of
        merge_size x merge_size zero patches and gives every tower parameter a gradient of exactly zero,
        so the losses and summed gradients are those of the ranks that did see media.

        Returns:
            float32 scalar 0 with a graph through the tower and every merger.
        """
        grid = torch.tensor([[1, self.merge_size, self.merge_size]], device=device)
        patches = torch.zeros(self.merge_size**2, self.patch_embed.in_features, device=device)
        features, deepstack = self(patches, grid, with_deepstack=True)
        return sum((f.float().sum() for f in deepstack), features.float().sum()) * 0.0
