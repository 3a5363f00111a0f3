"""The non-weight files of a complete HF Qwen2.5-VL directory: tokenizer, chat template, image and video
preprocessor configs, generation config.

With them, ``AutoProcessor`` / ``AutoTokenizer`` / vLLM serve the directory on its own. The layout is
the released Qwen2.5-VL-Instruct checkpoints' (``tokenizer.json``, ``vocab.json``, ``merges.txt``,
``tokenizer_config.json``, ``chat_template.json``, ``preprocessor_config.json``,
``generation_config.json``) plus transformers 5.x's ``video_preprocessor_config.json``. Tokenizer
files come from the checkpoint a run started from when it has them (unchanged), else from the run's
tokenizer; the preprocessor configs always carry the run's pixel budgets, which the weights were
trained with.
"""

import functools
import json
import shutil
from importlib.resources import files
from pathlib import Path

from qwenvl_data._constants import ENDOFTEXT_ID, IM_END_ID, RESCALE_FACTOR
from qwenvl_data.transform import Qwen2_5_VLTransform

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")
CHAT_TEMPLATE_FILES = ("chat_template.json", "chat_template.jinja")
GENERATION_CONFIG = "generation_config.json"


def official_chat_template() -> str:
    """The chat template of the released Qwen2.5-VL-Instruct checkpoints (their chat_template.json), verbatim."""
    return files("qwenvl_data.text").joinpath("chat_template.jinja").read_text(encoding="utf-8")


def _tokenizer_config(transform: Qwen2_5_VLTransform, chat_template: str) -> dict:
    """``tokenizer_config.json`` as the released checkpoints have it (transformers' ``Qwen2Tokenizer``)."""
    added = transform.tokenizer.tokenizer.get_added_tokens_decoder()
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(token_id): {
                "content": token.content, "lstrip": token.lstrip, "normalized": token.normalized,
                "rstrip": token.rstrip, "single_word": token.single_word, "special": token.special,
            }  # fmt: skip
            for token_id, token in sorted(added.items())
        },
        "bos_token": None,
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,  # the released value; the run's max_seq_len is a training cut, not the model's
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def _write_tokenizer(out_dir: Path, transform: Qwen2_5_VLTransform) -> None:
    """The run's tokenizer: its tokenizer.json, its BPE model's vocab.json + merges.txt, the configs."""
    tokenizer = transform.tokenizer.tokenizer
    tokenizer.save(str(out_dir / "tokenizer.json"))
    tokenizer.model.save(str(out_dir))  # vocab.json, merges.txt
    template = official_chat_template()
    (out_dir / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(transform, template), indent=2))
    (out_dir / "chat_template.json").write_text(json.dumps({"chat_template": template}, indent=2))


def _preprocessor_configs(transform: Qwen2_5_VLTransform) -> tuple[dict, dict]:
    """(preprocessor_config.json, video_preprocessor_config.json) with the transform's pixel budgets."""
    image = transform.image_transform
    shared = {
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": list(image.image_mean), "image_std": list(image.image_std), "rescale_factor": RESCALE_FACTOR,
        "resample": 3, "patch_size": image.patch_size, "temporal_patch_size": image.temporal_patch_size,
        "merge_size": image.merge_size, "processor_class": "Qwen2_5_VLProcessor",
    }  # fmt: skip
    images = {
        **shared, "image_processor_type": "Qwen2VLImageProcessor",
        "min_pixels": image.min_pixels, "max_pixels": image.max_pixels,
        "size": {"shortest_edge": image.min_pixels, "longest_edge": image.max_pixels},
    }  # fmt: skip
    video = image.video_options
    videos = {
        **shared, "video_processor_type": "Qwen2VLVideoProcessor",
        "min_pixels": video.min_pixels, "max_pixels": video.max_pixels,
        "size": {"shortest_edge": video.min_pixels, "longest_edge": video.max_pixels},
        "fps": video.fps, "min_frames": video.min_frames, "max_frames": video.max_frames,
    }  # fmt: skip
    return images, videos


def write_processor_files(
    out_dir: str | Path, transform: Qwen2_5_VLTransform | None = None, source_dir: str | Path | None = None
) -> None:
    """Write the tokenizer, chat template, preprocessor and generation configs next to the weights.

    Args:
        out_dir: the HF directory being written.
        transform: the run's transform (tokenizer and pixel budgets). None: the one ``source_dir`` holds
            (its own files are copied), else the Qwen vocabulary of ``qwenvl_data[vocab]`` with the
            default budgets.
        source_dir: the HF checkpoint the weights came from; its tokenizer files, chat template and
            generation_config.json are copied when it has them.

    Raises:
        FileNotFoundError: no tokenizer can be found (no transform, none in ``source_dir``, and the
            ``qwenvl_data[vocab]`` extra not installed).
    """
    out_dir = Path(out_dir)
    source = Path(source_dir) if source_dir is not None else None
    source_has_tokenizer = source is not None and (source / "tokenizer.json").is_file()
    if transform is None:
        transform = _transform_for(source if source_has_tokenizer else None)
    if source_has_tokenizer:
        for name in TOKENIZER_FILES + CHAT_TEMPLATE_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, out_dir / name)
    else:
        _write_tokenizer(out_dir, transform)
    images, videos = _preprocessor_configs(transform)
    (out_dir / "preprocessor_config.json").write_text(json.dumps(images, indent=2))
    (out_dir / "video_preprocessor_config.json").write_text(json.dumps(videos, indent=2))
    if source is not None and (source / GENERATION_CONFIG).is_file():
        shutil.copyfile(source / GENERATION_CONFIG, out_dir / GENERATION_CONFIG)
    else:
        # Chat generation stops at <|im_end|> (or <|endoftext|>), as the released generation_config.json says.
        generation = {
            "bos_token_id": ENDOFTEXT_ID, "eos_token_id": [IM_END_ID, ENDOFTEXT_ID], "pad_token_id": ENDOFTEXT_ID
        }
        (out_dir / GENERATION_CONFIG).write_text(json.dumps(generation, indent=2))


@functools.cache
def _packaged_transform() -> Qwen2_5_VLTransform:
    """The packaged vocabulary with the default budgets (built once: reading the BPE files takes a second)."""
    from qwenvl_data.vocab import qwen_vocab_files

    return Qwen2_5_VLTransform(*qwen_vocab_files())


def _transform_for(source: Path | None) -> Qwen2_5_VLTransform:
    """A transform when the caller has none: the source checkpoint's tokenizer and pixel budgets, else the
    packaged vocabulary with the defaults."""
    if source is None:
        return _packaged_transform()
    budgets = {}
    config_file = source / "preprocessor_config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
        size = config.get("size") or {}
        budgets["min_pixels"] = config.get("min_pixels", size.get("shortest_edge"))
        budgets["max_pixels"] = config.get("max_pixels", size.get("longest_edge"))
    return Qwen2_5_VLTransform(str(source / "tokenizer.json"), **{k: v for k, v in budgets.items() if v is not None})
