"""``--family``: which model family a bench compares with transformers (the table is tests/support/families.py, the
one the parity tests use, so a family added there is benchmarkable too)."""

import argparse
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.families import FAMILIES, FamilyUnderTest  # noqa: E402


def add_family_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", choices=list(FAMILIES), default="qwen2_5_vl",
                        help="model family (config.json model_type) to compare, default qwen2_5_vl")  # fmt: skip


def family_under_test(model_type: str) -> FamilyUnderTest:
    return FAMILIES[model_type]


@contextmanager
def processor_checkpoint(family: FamilyUnderTest) -> Iterator[Path]:
    """A temporary checkpoint directory with the family's released processor files (tokenizer, chat template,
    preprocessor config), which both sides read: ``checkpoint_transform`` and transformers."""
    with tempfile.TemporaryDirectory() as root:
        yield family.write_processor_files(Path(root) / family.model_type)
