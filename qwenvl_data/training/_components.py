"""Builders the configs name as `_component_` when a piece needs a default that YAML cannot spell."""

import inspect
import os
from collections.abc import Callable
from typing import Any

from qwenvl_data.datasets import ChatDataset, multimodal_chat_dataset, synthetic_vqa_dataset
from qwenvl_data.models._processor_files import checkpoint_transform, packaged_transform
from qwenvl_data.transform import Qwen2_5_VLTransform


def packaged_vocab_transform(**transform_kwargs: Any) -> Qwen2_5_VLTransform:
    """Qwen2_5_VLTransform on the Qwen vocabulary shipped by `qwenvl_data[vocab]` (no checkpoint, no download).

    Configs that start from a checkpoint name `qwenvl_data.training.checkpoint_transform` instead (the
    checkpoint's own tokenizer.json and preprocessor configs).

    Args:
        **transform_kwargs: the other Qwen2_5_VLTransform arguments (family, max_seq_len, min_pixels, ...);
            ``family: qwen3_vl`` takes Qwen3's tokenizer (see ``packaged_transform``).
    """
    return packaged_transform(**transform_kwargs)


# Its keywords are the transform's (but the vocabulary files): said in its signature, so that a config check names a
# misspelled key (`tokenizer.max_seq_length`, did you mean `max_seq_len`?) before anything is built.
packaged_vocab_transform.__signature__ = inspect.Signature(
    list(inspect.signature(Qwen2_5_VLTransform).parameters.values())[2:], return_annotation=Qwen2_5_VLTransform
)


def records_or_synthetic_dataset(
    model_transform: Callable[[dict], dict] | None,
    *,
    source: str | os.PathLike | None = None,
    data_files: Any = None,
    **options: Any,
) -> ChatDataset:
    """Your records when ``data_files`` or ``source`` is set, else the generated shapes-VQA questions.

    What lets ``configs/generate.yaml`` score a checkpoint on your data with one override
    (``dataset.data_files=/data/test.jsonl`` or ``dataset.source=<saved dataset directory>``) while its
    default stays the tiny recipe's held-out questions.

    Args:
        model_transform: e.g. ``checkpoint_transform(...)``; None yields internal-form samples.
        source: as ``multimodal_chat_dataset``'s; None with ``data_files`` tells each file's kind from its
            content and extension (JSON Lines or a JSON array by content, parquet, Arrow).
        data_files: as ``multimodal_chat_dataset``'s.
        **options: the keywords of ``multimodal_chat_dataset`` (your records) and of ``synthetic_vqa_dataset``
            (``num_samples``, ``seed``, ``image_size``, ...: they describe the generated set and are not used
            with your records); ``on_error`` and ``max_tokens`` apply to both.

    Raises:
        TypeError: an option for your records (``format``, ``image_dir``, ...) without ``data_files`` or ``source``.
    """
    synthetic_keys = set(inspect.signature(synthetic_vqa_dataset).parameters) - {"model_transform"}
    if source is None and data_files is None:
        misplaced = sorted(set(options) - synthetic_keys)
        if misplaced:
            raise TypeError(f"{misplaced} apply to your records: set data_files (or source) too")
        return synthetic_vqa_dataset(model_transform, **options)
    record_keys = set(inspect.signature(multimodal_chat_dataset).parameters)
    used = {key: value for key, value in options.items() if key in record_keys or key not in synthetic_keys}
    return multimodal_chat_dataset(model_transform, source=source, data_files=data_files, **used)


__all__ = ["checkpoint_transform", "packaged_vocab_transform", "records_or_synthetic_dataset"]
