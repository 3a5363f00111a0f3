"""How Qwen2.5-VL is wired from torchtune building blocks; every size is a parameter.

The language model is torchtune's ``TransformerDecoder`` of ``TransformerSelfAttentionLayer`` s
(``MultiHeadAttention`` with GQA and q/k/v bias, SiLU-gated ``FeedForward``, ``RMSNorm``) whose
positional embedding is MRoPE. LoRA is added afterwards by swapping chosen projections for
torchtune's ``LoRALinear`` or our ``DoRALinear`` (torchtune's, with PEFT's bias rule), so the full and
LoRA models share one wiring.
"""

from collections.abc import Callable, Sequence

from torch import nn
from torchtune.models.qwen2._component_builders import qwen2_mlp
from torchtune.modules import (
    MultiHeadAttention,
    RMSNorm,
    TiedLinear,
    TransformerDecoder,
    TransformerSelfAttentionLayer,
)
from torchtune.modules.peft import LORA_ATTN_MODULES, LoRALinear

from qwenvl_data._constants import MERGE_SIZE, PATCH_SIZE, TEMPORAL_PATCH_SIZE, TOKENS_PER_SECOND
from qwenvl_data.models._adapters import DoRALinear
from qwenvl_data.models._model import Qwen2_5_VLModel
from qwenvl_data.models._mrope import MultimodalRotaryEmbeddings
from qwenvl_data.models._qwen3_vl_model import DeepstackDecoder, QKNormAttention
from qwenvl_data.models._vision import (
    PatchMerger,
    Qwen2_5_VisionTransformer,
    VisionBlock,
    VisionRotaryEmbeddings,
)


def qwen2_5_vl_vision_encoder(
    *,
    depth: int,
    embed_dim: int,
    num_heads: int,
    intermediate_dim: int,
    out_dim: int,
    full_attention_layers: Sequence[int],
    window_size: int = 112,
    patch_size: int = PATCH_SIZE,
    temporal_patch_size: int = TEMPORAL_PATCH_SIZE,
    merge_size: int = MERGE_SIZE,
    in_channels: int = 3,
    norm_eps: float = 1e-6,
) -> Qwen2_5_VisionTransformer:
    """Build the vision tower.

    Args:
        depth: number of vision blocks (32 released).
        embed_dim: vision hidden size (1280 released).
        num_heads: vision attention heads (16 released).
        intermediate_dim: vision MLP hidden size (3420 released).
        out_dim: merger output width = the language model's hidden size.
        full_attention_layers: blocks attending across whole frames; the others attend within
            windows (``[7, 15, 23, 31]`` released).
        window_size: window side in pixels (112).
        patch_size: patch side in pixels (14).
        temporal_patch_size: frames per patch (2).
        merge_size: patches merged per side into one LM token (2).
        in_channels: image channels (3).
        norm_eps: RMSNorm epsilon.

    Returns:
        Qwen2_5_VisionTransformer: ``pixel_values`` [N, 1176] + grids -> [N / 4, out_dim].
    """
    bad = [i for i in full_attention_layers if not 0 <= i < depth]
    if bad:
        raise ValueError(f"full_attention_layers {bad} out of range for depth {depth}")
    full = set(full_attention_layers)
    layers = nn.ModuleList(
        VisionBlock(embed_dim, num_heads, intermediate_dim, full_attention=i in full, norm_eps=norm_eps)
        for i in range(depth)
    )
    merger = PatchMerger(embed_dim, out_dim, merge_size=merge_size, norm_eps=norm_eps)
    patching = (in_channels, patch_size, temporal_patch_size, merge_size)
    return vision_tower(layers, merger, embed_dim, num_heads, *patching, window_size=window_size)


def vision_tower(
    layers: nn.ModuleList,
    merger: PatchMerger,
    embed_dim: int,
    num_heads: int,
    in_channels: int,
    patch_size: int,
    temporal_patch_size: int,
    merge_size: int,
    *,
    window_size: int | None,
    patch_bias: bool = False,
    **extras: object,
) -> Qwen2_5_VisionTransformer:
    """A vision tower around its family's blocks and merger: the patch embedding and the rotary table are
    the same in every family (arguments as in ``qwen2_5_vl_vision_encoder``; ``window_size=None``: no
    windows; ``patch_bias``: the patch embedding has a bias (Qwen3-VL); ``extras``: the tower's other
    arguments, Qwen3-VL's ``pos_embed`` and DeepStack)."""
    return Qwen2_5_VisionTransformer(
        patch_embed=nn.Linear(in_channels * temporal_patch_size * patch_size * patch_size, embed_dim, bias=patch_bias),
        layers=layers,
        merger=merger,
        rope=VisionRotaryEmbeddings(embed_dim // num_heads, merge_size),
        patch_size=patch_size,
        temporal_patch_size=temporal_patch_size,
        merge_size=merge_size,
        window_size=window_size,
        **extras,
    )


def qwen2_5_vl_text_decoder(
    *,
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    embed_dim: int,
    intermediate_dim: int,
    max_seq_len: int,
    mrope_section: Sequence[int],
    rope_base: float = 1_000_000.0,
    norm_eps: float = 1e-6,
    attn_dropout: float = 0.0,
    tie_word_embeddings: bool = False,
    head_dim: int | None = None,
    qk_norm: bool = False,
    mrope_interleaved: bool = False,
) -> tuple[nn.Embedding, TransformerDecoder]:
    """Build the Qwen2.5 language model with MRoPE, or with the last three arguments Qwen3's.

    Args:
        vocab_size: embedding rows (151936 for 3B, 152064 for the larger sizes).
        num_layers: decoder layers.
        num_heads: query heads.
        num_kv_heads: key/value heads (GQA).
        embed_dim: hidden size.
        intermediate_dim: MLP hidden size.
        max_seq_len: longest sequence (and KV cache) the model accepts.
        mrope_section: frequencies per (temporal, height, width) axis, summing to head_dim // 2.
        rope_base: RoPE theta.
        norm_eps: RMSNorm epsilon.
        attn_dropout: attention dropout.
        tie_word_embeddings: output projection shares the embedding weight.
        head_dim: attention head size; None: ``embed_dim // num_heads`` (Qwen2.5). Qwen3 gives it explicitly.
        qk_norm: Qwen3's attention: RMSNorm over each query/key head before the rotary embedding
            (``QKNormAttention``), no q/k/v bias, and a ``DeepstackDecoder``; False: q/k/v bias (Qwen2.5).
        mrope_interleaved: interleave the MRoPE axes across frequencies (Qwen3-VL).

    Returns:
        (tok_embeddings, decoder): the embedding and a ``TransformerDecoder`` that expects
        embeddings (``Qwen2_5_VLModel`` replaces its ``tok_embeddings`` with an identity).
    """
    head_dim = head_dim or embed_dim // num_heads
    rope = MultimodalRotaryEmbeddings(head_dim, list(mrope_section), base=rope_base, interleaved=mrope_interleaved)
    attention_cls = QKNormAttention if qk_norm else MultiHeadAttention
    head_norms = ("q_norm", "k_norm") if qk_norm else ()
    layers = nn.ModuleList()
    for _ in range(num_layers):
        attn = attention_cls(
            embed_dim=embed_dim,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            q_proj=nn.Linear(embed_dim, num_heads * head_dim, bias=not qk_norm),
            k_proj=nn.Linear(embed_dim, num_kv_heads * head_dim, bias=not qk_norm),
            v_proj=nn.Linear(embed_dim, num_kv_heads * head_dim, bias=not qk_norm),
            output_proj=nn.Linear(num_heads * head_dim, embed_dim, bias=False),
            pos_embeddings=rope,
            max_seq_len=max_seq_len,
            attn_dropout=attn_dropout,
            **{name: RMSNorm(head_dim, eps=norm_eps) for name in head_norms},
        )
        layers.append(
            TransformerSelfAttentionLayer(
                attn=attn,
                mlp=qwen2_mlp(dim=embed_dim, hidden_dim=intermediate_dim),
                sa_norm=RMSNorm(embed_dim, eps=norm_eps),
                mlp_norm=RMSNorm(embed_dim, eps=norm_eps),
            )
        )
    tok_embeddings = nn.Embedding(vocab_size, embed_dim)
    output = TiedLinear(tok_embeddings) if tie_word_embeddings else nn.Linear(embed_dim, vocab_size, bias=False)
    decoder = (DeepstackDecoder if qk_norm else TransformerDecoder)(
        tok_embeddings=tok_embeddings,
        layers=layers,
        max_seq_len=max_seq_len,
        num_heads=num_heads,
        head_dim=head_dim,
        norm=RMSNorm(embed_dim, eps=norm_eps),
        output=output,
    )
    return tok_embeddings, decoder


def qwen2_5_vl(
    *,
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    embed_dim: int,
    intermediate_dim: int,
    max_seq_len: int,
    mrope_section: Sequence[int],
    rope_base: float = 1_000_000.0,
    norm_eps: float = 1e-6,
    attn_dropout: float = 0.0,
    tie_word_embeddings: bool = False,
    vision_depth: int,
    vision_embed_dim: int,
    vision_num_heads: int,
    vision_intermediate_dim: int,
    vision_full_attention_layers: Sequence[int],
    vision_window_size: int = 112,
    tokens_per_second: int = TOKENS_PER_SECOND,
) -> Qwen2_5_VLModel:
    """Build a full Qwen2.5-VL: vision tower + merger + language model.

    Args:
        vocab_size, num_layers, num_heads, num_kv_heads, embed_dim, intermediate_dim, max_seq_len,
        mrope_section, rope_base, norm_eps, attn_dropout, tie_word_embeddings: the language model,
            see ``qwen2_5_vl_text_decoder``.
        vision_depth, vision_embed_dim, vision_num_heads, vision_intermediate_dim,
        vision_full_attention_layers, vision_window_size: the vision tower, see
            ``qwen2_5_vl_vision_encoder``; its merger projects to ``embed_dim``.
        tokens_per_second: temporal MRoPE ids per second of video (2 released).

    Returns:
        Qwen2_5_VLModel.
    """
    tok_embeddings, decoder = qwen2_5_vl_text_decoder(
        vocab_size=vocab_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        embed_dim=embed_dim,
        intermediate_dim=intermediate_dim,
        max_seq_len=max_seq_len,
        mrope_section=mrope_section,
        rope_base=rope_base,
        norm_eps=norm_eps,
        attn_dropout=attn_dropout,
        tie_word_embeddings=tie_word_embeddings,
    )
    visual = qwen2_5_vl_vision_encoder(
        depth=vision_depth,
        embed_dim=vision_embed_dim,
        num_heads=vision_num_heads,
        intermediate_dim=vision_intermediate_dim,
        out_dim=embed_dim,
        full_attention_layers=vision_full_attention_layers,
        window_size=vision_window_size,
    )
    return Qwen2_5_VLModel(
        tok_embeddings=tok_embeddings, decoder=decoder, visual=visual, tokens_per_second=tokens_per_second
    )


def lora_qwen2_5_vl(
    lora_attn_modules: Sequence[str],
    apply_lora_to_mlp: bool = False,
    apply_lora_to_output: bool = False,
    *,
    lora_rank: int,
    lora_alpha: float,
    lora_dropout: float = 0.0,
    use_dora: bool = False,
    quantize_base: bool = False,
    train_vision_tower: bool = False,
    train_merger: bool = True,
    build: Callable[..., Qwen2_5_VLModel] = qwen2_5_vl,
    **model_args: object,
) -> Qwen2_5_VLModel:
    """Build Qwen2.5-VL with LoRA adapters on chosen language-model projections.

    The one LoRA wiring of every family whose decoder is torchtune's: ``lora_qwen2_vl`` is this
    with ``build=qwen2_vl``, ``lora_qwen3_vl`` with ``build=qwen3_vl``.

    Trainable after ``set_trainable_params(model, get_adapter_params(model))``: the adapters,
    the merger and Qwen3-VL's DeepStack mergers (``train_merger``) and the whole vision tower
    (``train_vision_tower``).

    Args:
        lora_attn_modules: attention projections to adapt, from
            ``{"q_proj", "k_proj", "v_proj", "output_proj"}``.
        apply_lora_to_mlp: also adapt the MLP projections (w1, w2, w3).
        apply_lora_to_output: also adapt the output projection (not with tied embeddings).
        lora_rank: adapter rank.
        lora_alpha: adapter scale numerator (scale = alpha / rank).
        lora_dropout: dropout before the adapter.
        use_dora: DoRA instead of LoRA (PEFT's rule: the bias is not scaled by the magnitude ratio).
        quantize_base: NF4-quantize the adapted base weights (QLoRA).
        train_vision_tower: train the vision tower (merger included) in full.
        train_merger: train the merger in full even when the tower is frozen.
        build: the base model's builder, called with ``model_args`` (``qwen2_5_vl``).
        **model_args: the arguments of ``build``.

    Returns:
        Qwen2_5_VLModel with ``LoRALinear`` (or ``DoRALinear``) projections.

    Raises:
        ValueError: for unknown module names, no adapted module at all, or LoRA on a tied output.
    """
    unknown = set(lora_attn_modules) - set(LORA_ATTN_MODULES.__args__)
    if unknown:
        raise ValueError(f"unknown lora_attn_modules {sorted(unknown)}; choose from {LORA_ATTN_MODULES.__args__}")
    if not (lora_attn_modules or apply_lora_to_mlp or apply_lora_to_output):
        raise ValueError("LoRA needs at least one adapted module (lora_attn_modules, mlp or output)")
    if apply_lora_to_output and model_args.get("tie_word_embeddings"):
        raise ValueError("apply_lora_to_output cannot be used with tied word embeddings: there is no output weight")
    model = build(**model_args)
    adapter_cls = DoRALinear if use_dora else LoRALinear

    def adapted(linear: nn.Linear) -> nn.Module:
        return adapter_cls(
            linear.in_features,
            linear.out_features,
            rank=lora_rank,
            alpha=lora_alpha,
            dropout=lora_dropout,
            use_bias=linear.bias is not None,
            quantize_base=quantize_base,
        )

    for layer in model.decoder.layers:
        for name in lora_attn_modules:
            setattr(layer.attn, name, adapted(getattr(layer.attn, name)))
        if apply_lora_to_mlp:
            for name in ("w1", "w2", "w3"):
                setattr(layer.mlp, name, adapted(getattr(layer.mlp, name)))
    if apply_lora_to_output:
        model.decoder.output = adapted(model.decoder.output)
    if train_vision_tower:
        model.trainable_modules = ("visual",)
    elif train_merger:
        model.trainable_modules = tuple(f"visual.{name}" for name in model.visual.merger_modules)
    return model
