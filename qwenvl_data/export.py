"""Merge a LoRA/DoRA adapter into its base checkpoint, without training: one complete HF directory.

    python -m qwenvl_data.export --checkpoint-dir BASE --adapter-dir ADAPTER --output-dir OUT [--dtype bf16]

BASE is a local HF Qwen2.5-VL directory; ADAPTER a PEFT adapter directory (a LoRA recipe's
``output_dir/adapter``, or any PEFT LoRA/DoRA adapter of Qwen2.5-VL). OUT gets the merged weights
(in BASE's dtype unless ``--dtype``), ``config.json`` and BASE's tokenizer, chat template and
generation config; see ``save_hf_model``. An adapter made for another model is refused with the keys
that do not fit, and OUT is left as it was.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from torchtune.modules import TiedLinear

from qwenvl_data.models import family_of_model, load_hf_model, merge_peft_adapter, read_peft_adapter, save_hf_model
from qwenvl_data.training._checkpoint import atomic_directory

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def checkpoint_dtype(checkpoint_dir: str | os.PathLike) -> torch.dtype:
    """The dtype a checkpoint's config.json says its weights are in (float32 when it does not say)."""
    config = json.loads((Path(checkpoint_dir) / "config.json").read_text())
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"{checkpoint_dir}/config.json: unknown dtype {name!r}")
    return dtype


def export_merged(
    checkpoint_dir: str | os.PathLike,
    adapter_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``checkpoint_dir`` with ``adapter_dir`` merged into ``output_dir`` (atomically).

    The merge is computed in float32 (LoRA: W + s B A; DoRA: times m / ||W + s B A||_row, the bias
    unchanged, PEFT's rule), then cast to ``dtype``.

    Args:
        checkpoint_dir: the base HF directory.
        adapter_dir: a PEFT LoRA/DoRA adapter directory for that base.
        output_dir: the HF directory to write (replaced when it exists).
        dtype: dtype of the saved weights; None keeps the base's.

    Returns:
        ``output_dir``.

    Raises:
        FileNotFoundError: a directory lacks its files.
        ValueError: the adapter does not fit the base (naming the keys), or has settings that cannot be merged.
    """
    model = load_hf_model(checkpoint_dir, dtype=torch.float32)
    tied = isinstance(model.decoder.output, TiedLinear)
    adapter = read_peft_adapter(adapter_dir, tie_word_embeddings=tied, key_map=family_of_model(model).weight_key_map)
    try:
        model.load_state_dict(merge_peft_adapter(model.state_dict(), adapter))
    except ValueError as error:
        raise ValueError(f"adapter {adapter_dir} does not fit checkpoint {checkpoint_dir}: {error}") from None
    output_dir = Path(output_dir)
    with atomic_directory(output_dir) as partial:
        save_hf_model(model, partial, dtype=dtype or checkpoint_dtype(checkpoint_dir), source_dir=checkpoint_dir)
    return output_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qwenvl_data.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint-dir", required=True, help="base HF Qwen2.5-VL directory")
    parser.add_argument("--adapter-dir", required=True, help="PEFT LoRA/DoRA adapter directory")
    parser.add_argument("--output-dir", required=True, help="HF directory to write")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), help="dtype of the saved weights (default: the base's)")
    args = parser.parse_args(argv)
    try:
        out = export_merged(args.checkpoint_dir, args.adapter_dir, args.output_dir, dtype=_DTYPES.get(args.dtype))
    except (OSError, ValueError) as error:  # missing files, an unfit or non-finite adapter, a failed write
        print(f"export failed: {error}", file=sys.stderr)
        return 1
    print(f"merged HF checkpoint: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
