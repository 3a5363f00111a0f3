"""The recipes' model: built from scratch or from a checkpoint (whole, or sharded as it streams in), with LoRA
adapters when the recipe is a LoRA one, the trainable set chosen, activation checkpointing and compilation."""

from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torchtune import training

from qwenvl_data.models import initialize_dora_magnitudes
from qwenvl_data.training._checkpoint import TrainingCheckpointer
from qwenvl_data.training._config import accepts_keyword, build
from qwenvl_data.training._distributed import (
    apply_activation_checkpointing,
    compile_blocks,
    rank_and_world,
    shard_model,
)
from qwenvl_data.training._lora import has_adapters, train_adapters_only
from qwenvl_data.training._settings import RecipeSettings

VISION_TOWER_PREFIX = "visual."


@dataclass(frozen=True)
class ModelPlan:
    """What kind of model a recipe trains and where.

    Args:
        recipe: the recipe's class name (for errors).
        lora: the model must carry LoRA/DoRA adapters, and only they (and what the builder marks) train.
        distributed: shard the model with FSDP2 over the process group.
        device, dtype: where the parameters live and their dtype.
    """

    recipe: str
    lora: bool
    distributed: bool
    device: torch.device
    dtype: torch.dtype


def build_model(
    cfg: DictConfig, settings: RecipeSettings, checkpointer: TrainingCheckpointer, plan: ModelPlan
) -> torch.nn.Module:
    """The ``model`` config built, initialized or loaded, made trainable as configured, and sharded if asked.

    A distributed run from a checkpoint builds on the meta device and streams rank 0's weights to every rank
    (``_build_sharded_pretrained``), so only rank 0 ever holds the full weights.

    Raises:
        ValueError: adapters present in a full recipe (or missing in a LoRA one), ``init_std`` with a
            ``checkpoint_dir``, or no trainable parameter left.
    """
    pretrained = checkpointer.checkpoint_dir is not None
    if plan.distributed and pretrained:
        model = _build_sharded_pretrained(cfg, settings, checkpointer, plan)
    else:
        with training.set_default_dtype(plan.dtype), plan.device:
            model = build(cfg, "model", **trained_in_full(cfg, settings, plan.lora))
        _check_adapters(model, cfg, plan)
        if settings.init_std is not None:
            if pretrained:
                raise ValueError("`init_std` re-initializes a from-scratch model; it cannot be used with a checkpoint_dir")
            init_weights(model, settings.init_std)
        checkpointer.load_pretrained(model, plan.dtype, trainable_only_missing=plan.lora)
        prepare_model(model, settings, plan.lora)
        if plan.distributed:
            shard_model(model, reshard_after_forward=settings.fsdp_reshard_after_forward)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("no trainable parameters: check freeze_vision_tower / freeze_merger / the LoRA settings")
    return model


def _build_sharded_pretrained(
    cfg: DictConfig, settings: RecipeSettings, checkpointer: TrainingCheckpointer, plan: ModelPlan
) -> torch.nn.Module:
    """Build on the meta device, shard, then stream rank 0's checkpoint weights to every rank."""
    with training.set_default_dtype(plan.dtype), torch.device("meta"):
        model = build(cfg, "model", **trained_in_full(cfg, settings, plan.lora))
    _check_adapters(model, cfg, plan)
    prepare_model(model, settings, plan.lora)
    shard_model(model, reshard_after_forward=settings.fsdp_reshard_after_forward)
    model.to_empty(device=plan.device)
    for module in model.modules():  # what to_empty left uninitialized and no checkpoint holds
        if hasattr(module, "rope_init"):
            module.rope_init()
        if plan.lora and hasattr(module, "initialize_parameters"):
            module.initialize_parameters()
    full = checkpointer.pretrained_state_dict(plan.dtype) if rank_and_world()[0] == 0 else {}
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=not plan.lora)
    set_model_state_dict(model, full, options=options)
    if plan.lora and checkpointer.adapter_dir is None:
        initialize_dora_magnitudes(model)  # from the loaded weights (an adapter_dir brings its own)
    return model


def _check_adapters(model: torch.nn.Module, cfg: DictConfig, plan: ModelPlan) -> None:
    """The model has LoRA/DoRA adapters exactly when this is a LoRA recipe (whatever the builder's name)."""
    adapted = has_adapters(model)
    if adapted != plan.lora:
        raise ValueError(
            f"{plan.recipe}: `model._component_` ({cfg.model._component_}) builds a model "
            f"{'with' if adapted else 'without'} LoRA/DoRA adapters: run it with a "
            f"{'lora' if adapted else 'full'}_finetune_* recipe"
        )


def trained_in_full(cfg: DictConfig, settings: RecipeSettings, lora: bool) -> dict[str, bool]:
    """LoRA builders' ``train_vision_tower`` / ``train_merger`` from the recipe's ``freeze_vision_tower`` /
    ``freeze_merger``, the one vocabulary of trainability in every config: a LoRA run trains its adapters
    and the merger, not the tower, unless told otherwise. A value the ``model`` section sets itself (the
    older spelling) wins; builders without these arguments get nothing."""
    if not lora:
        return {}
    freeze_tower = True if settings.freeze_vision_tower is None else settings.freeze_vision_tower
    wanted = {"train_vision_tower": not freeze_tower, "train_merger": not settings.freeze_merger}
    return {k: v for k, v in wanted.items() if k not in cfg.model and accepts_keyword(cfg.model._component_, k)}


def prepare_model(model: torch.nn.Module, settings: RecipeSettings, lora: bool) -> None:
    """Trainable set, activation checkpointing and compilation (before sharding, names unchanged)."""
    if lora:
        train_adapters_only(model)
    freeze_tower, freeze_merger = bool(settings.freeze_vision_tower), settings.freeze_merger
    # The merger and (Qwen3-VL) the DeepStack mergers: what projects the tower's output to the language model.
    merger_prefixes = tuple(f"{VISION_TOWER_PREFIX}{name}." for name in model.visual.merger_modules)
    for name, param in model.named_parameters():
        in_merger = name.startswith(merger_prefixes)
        in_tower = name.startswith(VISION_TOWER_PREFIX) and not in_merger
        if (freeze_tower and in_tower) or (freeze_merger and in_merger):
            param.requires_grad_(False)
    if settings.enable_activation_checkpointing:
        apply_activation_checkpointing(model)
    if settings.compile:
        compile_blocks(model)


def init_weights(model: torch.nn.Module, std: float) -> None:
    """From-scratch init as HF's `initializer_range`: weights ~ N(0, std), biases 0.

    torch's default embedding init (N(0, 1)) gives a tied output projection logits of std ~sqrt(dim):
    a loss near 100 at step 0 that the first hundred steps only spend shrinking.
    """
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in ("lora_a", "lora_b"):  # adapters keep their own (zero-B) init
            continue
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv3d)):
            torch.nn.init.normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                torch.nn.init.zeros_(module.bias)
