"""Numbers fixed by the released Qwen2.5-VL checkpoints; imported everywhere, typed once."""

from typing import Final

# Vision preprocessing (preprocessor_config.json of the released checkpoints).
PATCH_SIZE: Final = 14
MERGE_SIZE: Final = 2
TEMPORAL_PATCH_SIZE: Final = 2
PATCH_DIM: Final = 3 * TEMPORAL_PATCH_SIZE * PATCH_SIZE * PATCH_SIZE  # 1176 values per patch
IMAGE_MIN_PIXELS: Final = 56 * 56  # 3136
IMAGE_MAX_PIXELS: Final = 28 * 28 * 1280  # 1003520
# qwen-vl-utils' image bounds in merged tokens (IMAGE_MIN_TOKEN_NUM, IMAGE_MAX_TOKEN_NUM; x factor**2 pixels: 3136 and
# 12845056 at Qwen2.5-VL's factor 28): what an image part's explicit resized_height x resized_width is fitted into
# (its fetch_image ignores the part's min_pixels/max_pixels then).
RESIZED_IMAGE_MIN_TOKENS: Final = 4
RESIZED_IMAGE_MAX_TOKENS: Final = 16384
VIDEO_MIN_PIXELS: Final = 128 * 28 * 28  # 100352
VIDEO_MAX_PIXELS: Final = 768 * 28 * 28  # 602112
VIDEO_FPS: Final = 2.0
# Frame and pixel budgets of a clip read from a video file (qwen-vl-utils' FPS_MIN_FRAMES, FPS_MAX_FRAMES,
# VIDEO_TOTAL_PIXELS = 128000 * 28 * 28 * 0.9: a clip of at most 115,200 vision tokens).
VIDEO_MIN_FRAMES: Final = 4
VIDEO_MAX_FRAMES: Final = 768
VIDEO_TOTAL_PIXELS: Final = 128000 * 28 * 28 * 9 // 10  # 90316800
MAX_ASPECT_RATIO: Final = 200  # smart_resize refuses anything more extreme, as the reference does
OPENAI_CLIP_MEAN: Final = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: Final = (0.26862954, 0.26130258, 0.27577711)
RESCALE_FACTOR: Final = 1 / 255

# MRoPE: temporal position ids advance this many steps per second of video.
TOKENS_PER_SECOND: Final = 2

# Special tokens of Qwen2.5-VL, in id order from 151643 (the end of Qwen2's base vocabulary).
BASE_VOCAB_SIZE: Final = 151643
SPECIAL_TOKENS: Final[dict[str, int]] = {
    token: BASE_VOCAB_SIZE + offset
    for offset, token in enumerate(
        (
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|object_ref_start|>",
            "<|object_ref_end|>",
            "<|box_start|>",
            "<|box_end|>",
            "<|quad_start|>",
            "<|quad_end|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|vision_pad|>",
            "<|image_pad|>",
            "<|video_pad|>",
            "<tool_call>",
            "</tool_call>",
            "<|fim_prefix|>",
            "<|fim_middle|>",
            "<|fim_suffix|>",
            "<|fim_pad|>",
            "<|repo_name|>",
            "<|file_sep|>",
        )
    )
}
# Tokens from <tool_call> on are matched as whole tokens but are not "special" (kept by
# decode(skip_special_tokens=True)), as in the released tokenizer.json.
NON_SPECIAL_ADDED_TOKENS: Final = frozenset(t for t, i in SPECIAL_TOKENS.items() if i >= 151657)
FIRST_FAMILY_TOKEN_ID: Final = BASE_VOCAB_SIZE + len(SPECIAL_TOKENS)  # 151665: a family's own added tokens start here
VOCAB_SIZE: Final = 151936  # embedding rows of the released checkpoints (padded past the 151665 tokens)

ENDOFTEXT_ID: Final = SPECIAL_TOKENS["<|endoftext|>"]
IM_START_ID: Final = SPECIAL_TOKENS["<|im_start|>"]
IM_END_ID: Final = SPECIAL_TOKENS["<|im_end|>"]
VISION_START_ID: Final = SPECIAL_TOKENS["<|vision_start|>"]
VISION_END_ID: Final = SPECIAL_TOKENS["<|vision_end|>"]
IMAGE_PAD_ID: Final = SPECIAL_TOKENS["<|image_pad|>"]
VIDEO_PAD_ID: Final = SPECIAL_TOKENS["<|video_pad|>"]
PAD_ID: Final = ENDOFTEXT_ID  # never an image/video pad id, so padding cannot take vision features
IGNORE_INDEX: Final = -100
DEFAULT_SYSTEM_PROMPT: Final = "You are a helpful assistant."
