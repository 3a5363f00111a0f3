"""Helpers for the dataset tests: JSON Lines and image files on disk, and a small real transform (module-level,
so spawned DataLoader workers can unpickle it without importing the test modules)."""

import json
from pathlib import Path

from support.media import photo


def write_jsonl(path: Path, records: list) -> Path:
    """One JSON object per line (entries that are ``str`` are written verbatim, e.g. malformed lines)."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_photos(directory: Path, names: list[str], size: tuple[int, int] = (64, 48)) -> list[Path]:
    """Real PNG/JPEG photos (``media.photo``) under ``directory``; the suffix picks the format."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed, name in enumerate(names):
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        photo(*size, seed=seed).save(path)
        paths.append(path)
    return paths


def llava_turns(question: str, answer: str) -> list[dict]:
    """LLaVA ``conversations``: one human question, one gpt answer."""
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def text_record(i: int) -> dict:
    """A text-only OpenAI-style record with id ``r{i}``."""
    return {
        "id": f"r{i}",
        "messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}],
    }


def byte_tokens(sample: dict) -> dict:
    """A small real transform: UTF-8 bytes of every text, one token 256 per image."""
    tokens = []
    for message in sample["messages"]:  # torchtune Messages, as the datasets give them
        for part in message.content:
            tokens += list(part["content"].encode()) if part["type"] == "text" else [256]
    return {**sample, "tokens": tokens}
