"""One small description per Qwen-VL model family: everything that differs between them, in one place.

Code that must tell the families apart asks the family (``model_family(config["model_type"])``,
``family_of_model(model)``) instead of testing names itself. Qwen2-VL's processor and chat template
are Qwen2.5-VL's, so both families share the patching, normalization and budget constants. Qwen3-VL's
numbers are its released ``preprocessor_config.json`` / ``video_preprocessor_config.json`` (patch 16, mean/std
0.5, images 65536..16777216 pixels, videos 4096..25165824 pixels per clip, fps 2, 4..768 frames), its chat
template the released one, its video and position rules transformers 5.24's ``Qwen3VLProcessor`` /
``Qwen3VLVideoProcessor`` / ``Qwen3VLModel.get_rope_index`` (see ``VideoRule``, ``PositionRule``).
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from qwenvl_data._constants import (
    DEFAULT_SYSTEM_PROMPT,
    IMAGE_MAX_PIXELS,
    IMAGE_MIN_PIXELS,
    MERGE_SIZE,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    PATCH_SIZE,
    TEMPORAL_PATCH_SIZE,
    TOKENS_PER_SECOND,
    VIDEO_FPS,
    VIDEO_MAX_FRAMES,
    VIDEO_MAX_PIXELS,
    VIDEO_MIN_FRAMES,
    VIDEO_MIN_PIXELS,
    VIDEO_TOTAL_PIXELS,
)
from qwenvl_data.models import _model_builders, _qwen2_vl_model_builders, _qwen3_vl_model_builders
from qwenvl_data.models._component_builders import lora_qwen2_5_vl, qwen2_5_vl
from qwenvl_data.models._convert_weights import QWEN2_5_VL_KEY_MAP, builder_args_from_hf_config, hf_config_from_model
from qwenvl_data.models._model import Qwen2_5_VLModel
from qwenvl_data.models._qwen2_vl_component_builders import lora_qwen2_vl, qwen2_vl
from qwenvl_data.models._qwen2_vl_convert_weights import (
    QWEN2_VL_KEY_MAP,
    qwen2_vl_builder_args_from_hf_config,
    qwen2_vl_hf_config_from_model,
)
from qwenvl_data.models._qwen3_vl_component_builders import QWEN3_VL_PATCH_SIZE, lora_qwen3_vl, qwen3_vl
from qwenvl_data.models._qwen3_vl_convert_weights import (
    QWEN3_VL_KEY_MAP,
    qwen3_vl_builder_args_from_hf_config,
    qwen3_vl_hf_config_from_model,
)
from qwenvl_data.rope import PositionRule
from qwenvl_data.text._chat_template import ChatTemplate
from qwenvl_data.video import VideoRule


@dataclass(frozen=True)
class ModelFamily:
    """What one Qwen-VL family is: preprocessing numbers, position rule, builders, checkpoint format.

    Attributes:
        model_type: ``config.json``'s ``model_type``.
        architecture: transformers' model class (``config.json``'s ``architectures``).
        processor_class: transformers' processor class (``preprocessor_config.json``).
        video_processor_class: transformers' video processor class (``video_preprocessor_config.json``).
        patch_size, merge_size, temporal_patch_size: pixels per patch side, patches merged per side,
            frames per patch.
        image_mean, image_std: per-channel normalization.
        image_min_pixels, image_max_pixels: default pixel budget of an image.
        video_min_pixels, video_max_pixels: default pixel budget of a video frame, or of a whole clip when
            ``video_rule.clip_budget``.
        video_total_pixels: qwen-vl-utils' clip budget that lowers the per-frame maximum (None: not used).
        video_fps, video_min_frames, video_max_frames: default frame sampling of video files.
        video_rule: how video files are sampled, frames sized and videos written in the text (``VideoRule``).
        chat_template: what the family's official chat template does (``ChatTemplate``).
        position_rule: the MRoPE rule for videos (``PositionRule``): what ``mrope_position_ids``, the collators
            and generation apply.
        build, build_lora: the component builders (``qwen2_5_vl`` / ``lora_qwen2_5_vl`` style).
        sizes: released size -> builder of the random-initialized model.
        builder_args_from_hf_config: ``config.json`` dict -> ``build``'s keyword arguments.
        hf_config_from_model: (model, saved dtype) -> ``config.json`` dict.
        weight_key_map: HF state-dict name -> ours (``"{}"`` = a layer number), for ``hf_to_tune`` / ``tune_to_hf``.
    """

    model_type: str
    architecture: str
    processor_class: str
    video_processor_class: str
    patch_size: int
    merge_size: int
    temporal_patch_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    image_min_pixels: int
    image_max_pixels: int
    video_min_pixels: int
    video_max_pixels: int
    video_total_pixels: int | None
    video_fps: float
    video_min_frames: int
    video_max_frames: int
    video_rule: VideoRule
    chat_template: ChatTemplate
    position_rule: PositionRule
    build: Callable[..., Qwen2_5_VLModel]
    build_lora: Callable[..., Qwen2_5_VLModel]
    sizes: Mapping[str, Callable[[], Qwen2_5_VLModel]]
    builder_args_from_hf_config: Callable[[dict], dict]
    hf_config_from_model: Callable[[nn.Module, torch.dtype], dict]
    weight_key_map: Mapping[str, str]

    @property
    def tokens_per_second(self) -> int | None:
        """The position rule's temporal ids per second of video (None: one per temporal patch)."""
        return self.position_rule.tokens_per_second

    def transform_args(self) -> dict[str, object]:
        """The family's preprocessing as ``Qwen2_5_VLImageTransform`` keyword arguments (its numbers and video rule)."""
        return {
            "patch_size": self.patch_size, "merge_size": self.merge_size,
            "temporal_patch_size": self.temporal_patch_size, "image_mean": self.image_mean,
            "image_std": self.image_std, "min_pixels": self.image_min_pixels, "max_pixels": self.image_max_pixels,
            "video_min_pixels": self.video_min_pixels, "video_max_pixels": self.video_max_pixels,
            "video_total_pixels": self.video_total_pixels, "video_fps": self.video_fps,
            "video_min_frames": self.video_min_frames, "video_max_frames": self.video_max_frames,
            "video_rule": self.video_rule,
        }  # fmt: skip

    def processes_like(self, other: "ModelFamily") -> bool:
        """Whether ``other``'s transform gives this family's tokens and pixels (Qwen2-VL's and Qwen2.5-VL's do: the
        same numbers, video rule and chat template)."""
        return self.transform_args() == other.transform_args() and self.chat_template == other.chat_template

    def model_from_hf_config(self, config: dict, **lora_args: object) -> Qwen2_5_VLModel:
        """The (random-initialized) model ``config`` describes; with ``lora_args`` (at least
        ``lora_attn_modules``) its LoRA variant."""
        model_args = self.builder_args_from_hf_config(config)
        if lora_args:
            return self.build_lora(**lora_args, **model_args)
        return self.build(**model_args)


_SHARED_PROCESSING = dict(
    video_processor_class="Qwen2VLVideoProcessor",
    patch_size=PATCH_SIZE,
    merge_size=MERGE_SIZE,
    temporal_patch_size=TEMPORAL_PATCH_SIZE,
    image_mean=OPENAI_CLIP_MEAN,
    image_std=OPENAI_CLIP_STD,
    image_min_pixels=IMAGE_MIN_PIXELS,
    image_max_pixels=IMAGE_MAX_PIXELS,
    video_min_pixels=VIDEO_MIN_PIXELS,
    video_max_pixels=VIDEO_MAX_PIXELS,
    video_total_pixels=VIDEO_TOTAL_PIXELS,
    video_fps=VIDEO_FPS,
    video_min_frames=VIDEO_MIN_FRAMES,
    video_max_frames=VIDEO_MAX_FRAMES,
    video_rule=VideoRule(),  # qwen-vl-utils' sampling, per-frame budget
    chat_template=ChatTemplate(file="chat_template.jinja", default_system_prompt=DEFAULT_SYSTEM_PROMPT),
)
QWEN2_5_VL = ModelFamily(
    model_type="qwen2_5_vl",
    architecture="Qwen2_5_VLForConditionalGeneration",
    processor_class="Qwen2_5_VLProcessor",
    **_SHARED_PROCESSING,
    position_rule=PositionRule(tokens_per_second=TOKENS_PER_SECOND),
    build=qwen2_5_vl,
    build_lora=lora_qwen2_5_vl,
    sizes={
        "3b": _model_builders.qwen2_5_vl_3b,
        "7b": _model_builders.qwen2_5_vl_7b,
        "32b": _model_builders.qwen2_5_vl_32b,
        "72b": _model_builders.qwen2_5_vl_72b,
    },
    builder_args_from_hf_config=builder_args_from_hf_config,
    hf_config_from_model=hf_config_from_model,
    weight_key_map=QWEN2_5_VL_KEY_MAP,
)
QWEN2_VL = ModelFamily(
    model_type="qwen2_vl",
    architecture="Qwen2VLForConditionalGeneration",
    processor_class="Qwen2VLProcessor",
    **_SHARED_PROCESSING,
    position_rule=PositionRule(tokens_per_second=None),
    build=qwen2_vl,
    build_lora=lora_qwen2_vl,
    sizes={
        "2b": _qwen2_vl_model_builders.qwen2_vl_2b,
        "7b": _qwen2_vl_model_builders.qwen2_vl_7b,
        "72b": _qwen2_vl_model_builders.qwen2_vl_72b,
    },
    builder_args_from_hf_config=qwen2_vl_builder_args_from_hf_config,
    hf_config_from_model=qwen2_vl_hf_config_from_model,
    weight_key_map=QWEN2_VL_KEY_MAP,
)
QWEN3_VL = ModelFamily(
    model_type="qwen3_vl",
    architecture="Qwen3VLForConditionalGeneration",
    processor_class="Qwen3VLProcessor",
    video_processor_class="Qwen3VLVideoProcessor",
    patch_size=QWEN3_VL_PATCH_SIZE,
    merge_size=2,
    temporal_patch_size=2,
    image_mean=(0.5, 0.5, 0.5),
    image_std=(0.5, 0.5, 0.5),
    image_min_pixels=64 * 32 * 32,  # 65536: preprocessor_config.json size.shortest_edge
    image_max_pixels=16384 * 32 * 32,  # 16777216: size.longest_edge
    video_min_pixels=4 * 32 * 32,  # 4096 per clip: video_preprocessor_config.json size.shortest_edge
    video_max_pixels=24576 * 32 * 32,  # 25165824 per clip: size.longest_edge
    video_total_pixels=None,
    video_fps=2.0,
    video_min_frames=4,
    video_max_frames=768,
    video_rule=VideoRule(sampling="transformers", clip_budget=True, timestamps=True),
    chat_template=ChatTemplate(
        file="qwen3_vl_chat_template.jinja", default_system_prompt=None, system_first_only=True, media_in_answers=False,
        added_tokens=("<tool_response>", "</tool_response>", "<think>", "</think>"),  # ids 151665-151668
    ),
    position_rule=PositionRule(tokens_per_second=None, frames_apart=True),
    build=qwen3_vl,
    build_lora=lora_qwen3_vl,
    sizes={
        "2b": _qwen3_vl_model_builders.qwen3_vl_2b,
        "4b": _qwen3_vl_model_builders.qwen3_vl_4b,
        "8b": _qwen3_vl_model_builders.qwen3_vl_8b,
        "32b": _qwen3_vl_model_builders.qwen3_vl_32b,
    },
    builder_args_from_hf_config=qwen3_vl_builder_args_from_hf_config,
    hf_config_from_model=qwen3_vl_hf_config_from_model,
    weight_key_map=QWEN3_VL_KEY_MAP,
)
MODEL_FAMILIES: Mapping[str, ModelFamily] = {
    family.model_type: family for family in (QWEN2_VL, QWEN2_5_VL, QWEN3_VL)
}
# Recognized but not implemented yet: a clear refusal instead of a KeyError deep in the weights.
_NOT_YET_SUPPORTED = {"qwen3_vl_moe": "Qwen3-VL-MoE"}


def model_family(model_type: str | None, source: str = "config.json") -> ModelFamily:
    """The family of a ``config.json`` ``model_type``.

    Args:
        model_type: e.g. ``"qwen2_vl"``, ``"qwen2_5_vl"``, ``"qwen3_vl"``.
        source: where the value came from, for the error message (e.g. the config path).

    Raises:
        ValueError: no ``model_type``, a Qwen-VL family not supported yet (``qwen3_vl_moe``), or another model.
    """
    if model_type in MODEL_FAMILIES:
        return MODEL_FAMILIES[model_type]
    supported = ", ".join(MODEL_FAMILIES)
    if model_type is None:
        raise ValueError(f"{source}: no model_type, so no Qwen-VL family ({supported})")
    if model_type in _NOT_YET_SUPPORTED:
        raise ValueError(
            f"{source}: model_type {model_type!r} ({_NOT_YET_SUPPORTED[model_type]}) is not yet supported; "
            f"supported: {supported}"
        )
    raise ValueError(f"{source}: model_type {model_type!r} is not a supported Qwen-VL family ({supported})")


def family_of_model(model: nn.Module) -> ModelFamily:
    """The family a built model belongs to: its ``model_type`` attribute when it has one (a family's own model
    class says which it is, ``"qwen3_vl"``), else read off the shared ``Qwen2_5_VLModel``'s vision tower (Qwen2-VL's
    merger normalizes with LayerNorm, Qwen2.5-VL's with RMSNorm).

    Raises:
        ValueError: a ``model_type`` that names no supported family.
        TypeError: a model of neither kind (a model of your own).
    """
    model_type = getattr(model, "model_type", None)
    if isinstance(model_type, str):
        return model_family(model_type, f"{type(model).__name__}.model_type")
    norm = getattr(getattr(getattr(model, "visual", None), "merger", None), "norm", None)
    if norm is None:
        raise TypeError(f"{type(model).__name__} is no Qwen-VL family's model (no model_type, no Qwen2/2.5-VL merger)")
    return QWEN2_VL if isinstance(norm, nn.LayerNorm) else QWEN2_5_VL


def model_from_hf_config(config: dict, **lora_args: object) -> Qwen2_5_VLModel:
    """Build the model an HF ``config.json`` describes, for the family its ``model_type`` names.

    Args:
        config: the parsed ``config.json``.
        **lora_args: when given (at least ``lora_attn_modules``), the arguments of the family's LoRA
            builder (``lora_qwen2_5_vl``'s), which builds the LoRA variant instead.

    Returns:
        Qwen2_5_VLModel, randomly initialized.
    """
    return model_family(config.get("model_type")).model_from_hf_config(config, **lora_args)
