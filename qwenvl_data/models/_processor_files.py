"""The non-weight files of an HF Qwen-VL directory, read and written by one table: tokenizer, chat
template, image and video preprocessor configs, generation config.

Reading (``checkpoint_transform``) is the one way a checkpoint becomes a transform: for the recipes'
configs, ``inspect``, ``generate``, ``export`` and ``save_hf_model``. The tokenizer is the checkpoint's
``tokenizer.json`` with its added tokens (``vocab.json`` + ``merges.txt`` with Qwen2.5-VL's 22 special
tokens only when there is no tokenizer.json); budgets, patch sizes and normalization come from whichever
spelling transformers writes (``min_pixels``/``max_pixels`` or ``size: {shortest_edge, longest_edge}``,
in ``preprocessor_config.json`` / ``video_preprocessor_config.json`` or transformers 5's nested
``processor_config.json``).

Writing (``write_processor_files``) serializes the transform that tokenized the training data, so that
reloading the directory, with ``checkpoint_transform`` or transformers' ``AutoTokenizer``, tokenizes
identically. The layout is the released Qwen2.5-VL / Qwen3-VL Instruct checkpoints' (``tokenizer.json``,
``vocab.json``, ``merges.txt``, ``tokenizer_config.json``, ``chat_template.json``,
``preprocessor_config.json``, ``generation_config.json``, ``video_preprocessor_config.json``), with the
family's chat template, processor classes and numbers (``ModelFamily``: the transform's ``family``); a source checkpoint's ``generation_config.json`` and the settings of
its ``tokenizer_config.json`` that do not change token ids (``model_max_length``, ``padding_side``, ...)
are carried over.
"""

import functools
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

from qwenvl_data._constants import ENDOFTEXT_ID, IM_END_ID, RESCALE_FACTOR
from qwenvl_data._files import read_json
from qwenvl_data.models._families import QWEN2_5_VL, ModelFamily, model_family
from qwenvl_data.transform import Qwen2_5_VLTransform

GENERATION_CONFIG = "generation_config.json"
IMAGE_CONFIG, VIDEO_CONFIG, PROCESSOR_CONFIG = (
    "preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json"
)  # fmt: skip
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")  # transformers 5's file first, as it reads them

# Preprocessor-config key -> Qwen2_5_VLTransform argument. The shared keys are one setting of the vision
# encoder: an image and a video config that disagree on one cannot both be honoured.
_SHARED_KEYS = {
    "patch_size": "patch_size", "merge_size": "merge_size", "temporal_patch_size": "temporal_patch_size",
    "image_mean": "image_mean", "image_std": "image_std",
}  # fmt: skip
_IMAGE_KEYS = {"min_pixels": "min_pixels", "max_pixels": "max_pixels"}
_VIDEO_KEYS = {
    "min_pixels": "video_min_pixels", "max_pixels": "video_max_pixels", "fps": "video_fps",
    "min_frames": "video_min_frames", "max_frames": "video_max_frames",
}  # fmt: skip
# Steps the transform always takes; a config asking for anything else cannot be honoured.
_FIXED_STEPS = {
    "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
    "rescale_factor": RESCALE_FACTOR, "resample": 3,  # PIL bicubic
}  # fmt: skip
# tokenizer_config.json keys that decide token ids or the chat: written from the run's transform, never copied.
_TOKENIZATION_KEYS = (
    "add_bos_token", "add_prefix_space", "added_tokens_decoder", "additional_special_tokens", "bos_token",
    "chat_template", "clean_up_tokenization_spaces", "eos_token", "errors", "extra_special_tokens", "pad_token",
    "split_special_tokens", "tokenizer_class", "unk_token",
)  # fmt: skip


def official_chat_template(family: ModelFamily = QWEN2_5_VL) -> str:
    """The chat template of a family's released Instruct checkpoints (their chat_template.json), verbatim;
    Qwen2.5-VL's by default."""
    return family.chat_template.source()


# ---- reading ---------------------------------------------------------------------------------------------


def checkpoint_transform(
    model_dir: str | os.PathLike | None = None, *, checkpoint_dir: str | os.PathLike | None = None, **overrides: Any
) -> Qwen2_5_VLTransform:
    """The transform an HF checkpoint directory describes: its tokenizer, pixel and frame budgets, patch sizes.

    Precedence, per setting: an override given here (a config's ``tokenizer.max_pixels``), then the
    checkpoint's preprocessor files, then the numbers of the family its ``config.json`` names (``ModelFamily``;
    the transform's ``family``, which also sets the chat template and the video rule), then Qwen2.5-VL's. An override of None for a setting the checkpoint holds keeps
    the checkpoint's (``max_pixels: null`` in YAML).

    Args:
        model_dir: holds ``tokenizer.json`` (or ``vocab.json`` + ``merges.txt``: then Qwen2.5-VL's 22 special
            tokens are added) and optionally ``preprocessor_config.json``, ``video_preprocessor_config.json``
            or transformers 5's ``processor_config.json``. Video budgets come only from a video config: a
            released checkpoint has none, and qwen-vl-utils' video defaults are what it was trained with.
        checkpoint_dir: the earlier name of ``model_dir`` (configs written for it keep working).
        **overrides: any other ``Qwen2_5_VLTransform`` argument (``max_seq_len``, ``min_pixels``, ...).

    Returns:
        Qwen2_5_VLTransform.

    Raises:
        FileNotFoundError: the directory has no tokenizer files.
        ValueError: a preprocessor config that cannot be honoured (naming the file, key and value), or a ``family``
            (the family a config is written for) that processes data differently from the one ``config.json``
            names; one that processes alike (Qwen2-VL for Qwen2.5-VL) yields to the checkpoint's.

    Example:
        >>> transform = checkpoint_transform("outputs/tiny_synthetic/hf_model", max_seq_len=2048)  # doctest: +SKIP
    """
    if (model_dir is None) == (checkpoint_dir is None):
        raise TypeError("checkpoint_transform takes one directory: model_dir (or its earlier name checkpoint_dir)")
    root = Path(model_dir if model_dir is not None else checkpoint_dir)
    settings = {**family_settings(root), **processor_settings(root)}
    written_for = overrides.pop("family", None)  # the family a config is written for; the checkpoint's wins
    if written_for is not None and settings.setdefault("family", written_for) != written_for:
        _check_processing_alike(written_for, settings["family"], root)
    _warn_on_other_chat_template(root, model_family(settings.get("family", QWEN2_5_VL.model_type)))
    given = {key: value for key, value in overrides.items() if value is not None or key not in settings}
    return Qwen2_5_VLTransform(*tokenizer_files(root), **{**settings, **given})


def _check_processing_alike(written_for: str, checkpoint_family: str, root: Path) -> None:
    """A ``family`` given beside a checkpoint of another family: fine when both process data alike (Qwen2-VL and
    Qwen2.5-VL: the same numbers, budgets, video rule and template; the checkpoint's is taken), refused otherwise
    (a Qwen2.5-VL config's budgets on a Qwen3-VL checkpoint: other patch sizes, a per-clip video budget).

    Raises:
        ValueError: the two families process data differently, naming both.
    """
    given, checkpoint = model_family(written_for, "the family given"), model_family(checkpoint_family)
    if not checkpoint.processes_like(given):
        raise ValueError(
            f"family={written_for!r} was given (the config is written for {given.architecture}) but "
            f"{root / 'config.json'} is model_type {checkpoint_family!r}, which processes data differently "
            f"(patch size {checkpoint.patch_size}, its own budgets and chat template): use a config written for "
            f"{checkpoint_family} (configs/{checkpoint_family}_*.yaml), or set tokenizer.family=null to take the "
            f"checkpoint's family with this config's budgets, read by {checkpoint.architecture}'s rules"
            f"{_budget_differences(given, checkpoint)}"
        )


def _budget_differences(given: ModelFamily, checkpoint: ModelFamily) -> str:
    """What the same pixel budgets mean under ``checkpoint``'s rules that they did not under ``given``'s."""
    differences = []
    if checkpoint.video_rule.clip_budget != given.video_rule.clip_budget:
        unit = "the whole clip" if checkpoint.video_rule.clip_budget else "one frame"
        differences.append(f"video_min_pixels / video_max_pixels bound {unit}")
    side, given_side = checkpoint.patch_size * checkpoint.merge_size, given.patch_size * given.merge_size
    if side != given_side:
        differences.append(f"one vision token per {side}x{side} px instead of {given_side}x{given_side}")
    return f" ({'; '.join(differences)})" if differences else ""


def tokenizer_files(root: Path) -> tuple[str, str | None]:
    """``(path, merges_file)`` for ``Qwen2_5_VLTokenizer``: the tokenizer.json when there is one.

    Raises:
        FileNotFoundError: neither a tokenizer.json nor vocab.json + merges.txt.
    """
    if (root / "tokenizer.json").is_file():
        return str(root / "tokenizer.json"), None
    if (root / "vocab.json").is_file() and (root / "merges.txt").is_file():
        return str(root / "vocab.json"), str(root / "merges.txt")
    raise FileNotFoundError(f"{root} has no tokenizer files (tokenizer.json, or vocab.json + merges.txt)")


def family_settings(root: Path) -> dict[str, Any]:
    """``{"family": model_type}``, the ``Qwen2_5_VLTransform`` argument of the family ``root/config.json`` names
    ({} without a config.json): the transform takes the family's numbers, chat template and video rule from it.

    Raises:
        ValueError: config.json names no supported family.
    """
    config_file = root / "config.json"
    if not config_file.is_file():
        return {}
    return {"family": model_family(read_json(config_file).get("model_type"), str(config_file)).model_type}


def processor_settings(root: Path) -> dict[str, Any]:
    """``Qwen2_5_VLTransform`` arguments from a directory's preprocessor configs (only those it sets).

    Raises:
        ValueError: a key whose value the transform cannot honour, or image and video configs that disagree
            on a setting of the vision encoder (patch sizes, mean, std).
    """
    image, image_file = _processor_config(root, "image_processor", IMAGE_CONFIG)
    video, video_file = _processor_config(root, "video_processor", VIDEO_CONFIG)
    settings = _read(image, image_file, {**_SHARED_KEYS, **_IMAGE_KEYS})
    for argument, value in _read(video, video_file, {**_SHARED_KEYS, **_VIDEO_KEYS}).items():
        if argument in _SHARED_KEYS.values() and argument in settings and settings[argument] != value:
            raise ValueError(
                f"{root}: {image_file} has {argument}={settings[argument]!r} but {video_file} has {value!r}; "
                "one vision encoder takes one value"
            )
        settings[argument] = value
    return settings


def _processor_config(root: Path, nested_key: str, flat_name: str) -> tuple[dict, str]:
    """One processor's config and where it came from: transformers 5's ``processor_config.json`` entry
    first (as transformers reads it), else the flat file; ``{}`` when neither exists."""
    if (root / PROCESSOR_CONFIG).is_file():
        nested = read_json(root / PROCESSOR_CONFIG)
        if isinstance(nested.get(nested_key), dict):
            return nested[nested_key], f"{PROCESSOR_CONFIG}[{nested_key!r}]"
    if (root / flat_name).is_file():
        return read_json(root / flat_name), flat_name
    return {}, flat_name


def _read(config: dict, name: str, keys: dict[str, str]) -> dict[str, Any]:
    """The transform arguments ``config`` sets, by ``keys``; budgets in either spelling.

    transformers' rule for the two spellings: ``min_pixels``/``max_pixels`` win over ``size``.
    """
    for key, expected in _FIXED_STEPS.items():
        value = config.get(key)
        if value is not None and not _same(value, expected):
            raise ValueError(f"{name}: {key}={value!r} is not supported (the Qwen2.5-VL transform uses {expected!r})")
    values = {key: config.get(key) for key in keys}
    size = config.get("size")
    if size is not None:
        if not isinstance(size, dict) or not {"shortest_edge", "longest_edge"} & set(size):
            raise ValueError(f"{name}: size={size!r}: expected {{'shortest_edge': ..., 'longest_edge': ...}} in pixels")
        values["min_pixels"] = values["min_pixels"] if values["min_pixels"] is not None else size.get("shortest_edge")
        values["max_pixels"] = values["max_pixels"] if values["max_pixels"] is not None else size.get("longest_edge")
    return {keys[key]: _as_setting(value) for key, value in values.items() if value is not None}


def _same(value: Any, expected: Any) -> bool:
    return math.isclose(value, expected, rel_tol=1e-6) if isinstance(expected, float) else value == expected


def _as_setting(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _checkpoint_chat_template(root: Path) -> tuple[str, str] | None:
    """(template, file) of the chat template a directory ships, as transformers finds it; None without one."""
    for name in CHAT_TEMPLATE_FILES:
        if (root / name).is_file():
            if name.endswith(".jinja"):
                return (root / name).read_text(encoding="utf-8"), name
            return read_json(root / name)["chat_template"], name
    return None


def _warn_on_other_chat_template(root: Path, family: ModelFamily) -> None:
    """Say so when a checkpoint ships a chat template other than the one conversations are rendered with."""
    found = _checkpoint_chat_template(root)
    if found is not None and found[0] != official_chat_template(family):
        warnings.warn(
            f"{root}/{found[1]} differs from the official {family.architecture} chat template; conversations are "
            "rendered with the official one (and HF directories written from this run carry it)",
            stacklevel=3,
        )


# ---- writing ---------------------------------------------------------------------------------------------


def write_processor_files(
    out_dir: str | Path,
    transform: Qwen2_5_VLTransform | None = None,
    source_dir: str | Path | None = None,
    *,
    family: ModelFamily | None = None,
) -> None:
    """Write the tokenizer, chat template, preprocessor and generation configs next to the weights.

    Args:
        out_dir: the HF directory being written.
        transform: the run's transform (the one that tokenized the training data). None:
            ``checkpoint_transform(source_dir)`` when it has tokenizer files, else the Qwen vocabulary of
            ``qwenvl_data[vocab]`` with ``family``'s preprocessing numbers and budgets.
        source_dir: the HF checkpoint the weights came from; its generation_config.json and the
            tokenizer_config.json settings that do not change token ids are carried over.
        family: the weights' family (``ModelFamily``), whose processor classes are written; the transform must
            process as it does (``ModelFamily.processes_like``; None: the transform's family; Qwen2.5-VL's when there
            is no transform either).

    Raises:
        FileNotFoundError: no tokenizer can be found (no transform, none in ``source_dir``, and the
            ``qwenvl_data[vocab]`` extra not installed).
        ValueError: the transform processes for another family than ``family`` (weights of one, text of another).
    """
    out_dir = Path(out_dir)
    source = Path(source_dir) if source_dir is not None else None
    if transform is None:
        transform = _transform_of(source, family or QWEN2_5_VL)
    transform_family = model_family(getattr(transform, "family", QWEN2_5_VL.model_type), "the transform's family")
    if family is not None and not family.processes_like(transform_family):
        raise ValueError(
            f"the weights are {family.architecture}'s but the run's transform is {transform_family.model_type}'s: "
            "build the transform with the model's family"
        )
    family = family or transform_family
    _write_tokenizer(out_dir, transform, _source_tokenizer_config(source), family)
    images, videos = _preprocessor_configs(transform, family)
    (out_dir / IMAGE_CONFIG).write_text(json.dumps(images, indent=2))
    (out_dir / VIDEO_CONFIG).write_text(json.dumps(videos, indent=2))
    if source is not None and (source / GENERATION_CONFIG).is_file():
        (out_dir / GENERATION_CONFIG).write_bytes((source / GENERATION_CONFIG).read_bytes())
    else:
        # Chat generation stops at <|im_end|> (or <|endoftext|>), as the released generation_config.json says.
        generation = {
            "bos_token_id": ENDOFTEXT_ID, "eos_token_id": [IM_END_ID, ENDOFTEXT_ID], "pad_token_id": ENDOFTEXT_ID
        }
        (out_dir / GENERATION_CONFIG).write_text(json.dumps(generation, indent=2))


def _transform_of(source: Path | None, family: ModelFamily) -> Qwen2_5_VLTransform:
    """The source checkpoint's transform when it has tokenizer files, else the packaged vocabulary with the
    family's numbers."""
    if source is not None:
        try:
            tokenizer_files(source)
        except FileNotFoundError:
            pass
        else:
            return checkpoint_transform(source)
    return _packaged_transform(family.model_type)


@functools.cache
def _packaged_transform(model_type: str) -> Qwen2_5_VLTransform:
    """The packaged vocabulary with a family's defaults (built once: reading the BPE files takes a second)."""
    return packaged_transform(family=model_type)


def packaged_transform(family: str = QWEN2_5_VL.model_type, **transform_kwargs: Any) -> Qwen2_5_VLTransform:
    """A family's transform on the ``vocab.json`` + ``merges.txt`` of ``qwenvl_data[vocab]`` (no checkpoint, no
    download): Qwen2.5-VL's 22 special tokens, then the family's own (``ChatTemplate.added_tokens``: Qwen3-VL's
    ``<tool_response>`` ... ``</think>``, ids 151665-151668), as the family's released tokenizer.json has them.

    Args:
        family: the family's ``model_type``.
        **transform_kwargs: the other ``Qwen2_5_VLTransform`` arguments (max_seq_len, min_pixels, ...).

    Raises:
        FileNotFoundError: the ``qwenvl_data[vocab]`` extra is not installed.
    """
    from qwenvl_data.vocab import qwen_vocab_files

    return Qwen2_5_VLTransform(*qwen_vocab_files(), family=family, **transform_kwargs)


def _source_tokenizer_config(source: Path | None) -> dict:
    """A source checkpoint's tokenizer_config.json without the keys that decide token ids ({} without one)."""
    if source is None or not (source / "tokenizer_config.json").is_file():
        return {}
    config = read_json(source / "tokenizer_config.json")
    return {key: value for key, value in config.items() if key not in _TOKENIZATION_KEYS}


def _tokenizer_config(transform: Qwen2_5_VLTransform, chat_template: str, carried: dict) -> dict:
    """``tokenizer_config.json`` as the released checkpoints have it (transformers' ``Qwen2Tokenizer``),
    the added tokens being the run's; ``carried`` settings (a source checkpoint's) win over the defaults."""
    added = transform.tokenizer.tokenizer.get_added_tokens_decoder()
    defaults = {
        "model_max_length": 131072,  # the released value; the run's max_seq_len is a training cut, not the model's
    }
    ours = {
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
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    return {**defaults, **carried, **ours}


def _write_tokenizer(out_dir: Path, transform: Qwen2_5_VLTransform, carried: dict, family: ModelFamily) -> None:
    """The run's tokenizer: its tokenizer.json, its BPE model's vocab.json + merges.txt, the configs."""
    tokenizer = transform.tokenizer.tokenizer
    tokenizer.save(str(out_dir / "tokenizer.json"))
    tokenizer.model.save(str(out_dir))  # vocab.json, merges.txt
    template = official_chat_template(family)
    config = _tokenizer_config(transform, template, carried)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out_dir / "chat_template.json").write_text(json.dumps({"chat_template": template}, indent=2))
    (out_dir / "chat_template.jinja").unlink(missing_ok=True)  # a stale one would win over chat_template.json


def _preprocessor_configs(transform: Qwen2_5_VLTransform, family: ModelFamily) -> tuple[dict, dict]:
    """(preprocessor_config.json, video_preprocessor_config.json) with the transform's settings, both spellings."""
    image = transform.image_transform
    video = image.video_options
    shared = {
        **_FIXED_STEPS,
        **{key: _as_json(getattr(image, argument)) for key, argument in _SHARED_KEYS.items()},
        "processor_class": family.processor_class,
    }
    images = {
        **shared, "image_processor_type": "Qwen2VLImageProcessor",
        **{key: getattr(image, argument) for key, argument in _IMAGE_KEYS.items()},
        "size": {"shortest_edge": image.min_pixels, "longest_edge": image.max_pixels},
    }  # fmt: skip
    videos = {
        **shared, "video_processor_type": family.video_processor_class,
        **{key: getattr(video, key) for key in _VIDEO_KEYS},  # VideoOptions' names are the config's
        "size": {"shortest_edge": video.min_pixels, "longest_edge": video.max_pixels},
    }  # fmt: skip
    return images, videos


def _as_json(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
