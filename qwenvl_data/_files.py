"""Reading JSON and safetensors files with errors that name the file (the libraries' own errors do not)."""

import errno
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from qwenvl_data._finite import require_finite


def read_json(path: str | os.PathLike) -> Any:
    """The parsed content of a JSON file.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not valid JSON (names the file, line and column) or not UTF-8 text.
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON: {error.msg} at line {error.lineno} column {error.colno}") from error
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error})") from error


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, all finite.

    Raises:
        ValueError: the file is truncated or not a safetensors file (names the file).
        NonFiniteWeightsError: a tensor holds NaN/inf (names the file and the tensor).
    """
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path}: not a readable safetensors file (corrupt or truncated?): {error}") from error
    require_finite(tensors, f"{path} (read)")
    return tensors


def write_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write finite tensors as a safetensors file (``format: pt``).

    Raises:
        NonFiniteWeightsError: a tensor holds NaN/inf (names the file and the tensor); nothing is written.
        OSError: the write failed (a full disk, ...), naming the file instead of safetensors' bare
            ``SafetensorError``; a partly written file is removed.
    """
    require_finite(tensors, f"{path} (not written)")
    try:
        save_file(tensors, path, metadata={"format": "pt"})
    except (SafetensorError, OSError) as error:
        Path(path).unlink(missing_ok=True)
        code = getattr(error, "errno", None) or (errno.ENOSPC if "No space left" in str(error) else errno.EIO)
        raise OSError(code, f"writing {path} failed: {error}") from error
