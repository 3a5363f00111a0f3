"""Builders the configs name as `_component_` when a piece needs a default that YAML cannot spell."""

import os
from pathlib import Path
from typing import Any

from qwenvl_data._files import read_json
from qwenvl_data.transform import Qwen2_5_VLTransform
from qwenvl_data.vocab import qwen_vocab_files


def packaged_vocab_transform(**transform_kwargs: Any) -> Qwen2_5_VLTransform:
    """Qwen2_5_VLTransform on the Qwen vocabulary shipped by `qwenvl_data[vocab]` (no checkpoint, no download).

    Configs that start from a released checkpoint name `qwenvl_data.transform.Qwen2_5_VLTransform`
    with the checkpoint's own vocab.json / merges.txt instead.

    Args:
        **transform_kwargs: the other Qwen2_5_VLTransform arguments (max_seq_len, min_pixels, max_pixels, ...).
    """
    vocab, merges = qwen_vocab_files()
    return Qwen2_5_VLTransform(vocab, merges, **transform_kwargs)


# preprocessor_config.json / video_preprocessor_config.json keys -> Qwen2_5_VLTransform arguments.
_IMAGE_BUDGETS = {"min_pixels": "min_pixels", "max_pixels": "max_pixels"}
_VIDEO_BUDGETS = {
    "min_pixels": "video_min_pixels", "max_pixels": "video_max_pixels", "fps": "video_fps",
    "min_frames": "video_min_frames", "max_frames": "video_max_frames",
}  # fmt: skip


def checkpoint_transform(checkpoint_dir: str | os.PathLike, **transform_kwargs: Any) -> Qwen2_5_VLTransform:
    """Qwen2_5_VLTransform as an HF checkpoint directory describes it: its own vocabulary, pixel and frame budgets.

    What generation and evaluation of a checkpoint need, so that images are tokenized as in its training run
    (a run's ``hf_model/`` records its budgets; a released checkpoint's ``preprocessor_config.json`` its own).

    Args:
        checkpoint_dir: holds ``vocab.json`` + ``merges.txt`` (or ``tokenizer.json``) and, optionally,
            ``preprocessor_config.json`` / ``video_preprocessor_config.json``.
        **transform_kwargs: other Qwen2_5_VLTransform arguments; they win over the directory's budgets.

    Raises:
        FileNotFoundError: the directory has no tokenizer files.
    """
    root = Path(checkpoint_dir)
    budgets: dict[str, Any] = {}
    configs = (("preprocessor_config.json", _IMAGE_BUDGETS), ("video_preprocessor_config.json", _VIDEO_BUDGETS))
    for name, keys in configs:
        config = read_json(root / name) if (root / name).is_file() else {}
        budgets.update({argument: config[key] for key, argument in keys.items() if config.get(key) is not None})
    if (root / "vocab.json").is_file() and (root / "merges.txt").is_file():
        files = (str(root / "vocab.json"), str(root / "merges.txt"))
    elif (root / "tokenizer.json").is_file():
        files = (str(root / "tokenizer.json"), None)
    else:
        raise FileNotFoundError(f"{root} has no tokenizer files (vocab.json + merges.txt, or tokenizer.json)")
    return Qwen2_5_VLTransform(*files, **{**budgets, **transform_kwargs})
