"""Shared fixtures: the real Qwen vocabulary and the official chat template."""

from pathlib import Path

import pytest
from support.families import FAMILIES

from qwenvl_data.vocab import qwen_vocab_files

DATA_DIR = Path(__file__).parent / "support" / "data"
CHAT_TEMPLATE_PATH = DATA_DIR / "qwen2_5_vl_chat_template.jinja"


@pytest.fixture(scope="session")
def vocab_files() -> tuple[str, str]:
    """(vocab.json, merges.txt) of Qwen's real 151,643-token vocabulary."""
    return qwen_vocab_files()


@pytest.fixture(scope="session")
def chat_template() -> str:
    """The chat template shipped with the released Qwen2.5-VL Instruct checkpoints, verbatim."""
    return CHAT_TEMPLATE_PATH.read_text()


@pytest.fixture(scope="session", params=list(FAMILIES))
def family_checkpoint(request, tmp_path_factory) -> Path:
    """Each family's released processor files in a checkpoint directory (support.families)."""
    return FAMILIES[request.param].write_processor_files(tmp_path_factory.mktemp(request.param))
