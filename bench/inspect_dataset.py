"""Throughput of ``python -m qwenvl_data.inspect``: records/s with 1 and 2 processes on small records.

Data: 10,000 JSON Lines records of four layouts (LLaVA, OpenAI parts, the_cauldron, text-only), each image
one of 16 generated 64x48..154x108 PNG photos, through the packaged-vocabulary ``Qwen2_5_VLTransform``
(max_seq_len 512). Timed: checking every record (config building excluded), the same work the command does.

Reference: reading every sample once through the map-style dataset in one process (``dataset[i]``), what a
training epoch's data loading does; the ratio says what inspect's bookkeeping costs and what processes add.
(The file is not named ``inspect.py``: run as a script, it would shadow the standard library module.)

Run: python bench/inspect_dataset.py [--records 10000] [--workers 1 2]
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.media import photo  # noqa: E402

from qwenvl_data.inspect import RecordInspector, build_datasets, inspect_records  # noqa: E402


def write_data(directory: Path, n: int) -> Path:
    names = []
    for i in range(16):
        name = f"p{i}.png"
        photo(64 + 6 * i, 48 + 4 * i, seed=i).save(directory / name)
        names.append(name)
    layouts = [
        lambda i, a, b: {"id": i, "image": a, "conversations": [
            {"from": "human", "value": f"<image>\nWhat is in picture {i}?"}, {"from": "gpt", "value": "Shapes."}]},
        lambda i, a, b: {"id": i, "messages": [
            {"role": "user", "content": [{"type": "image", "image": a}, {"type": "text", "text": f"Describe {i}."}]},
            {"role": "assistant", "content": "Colours."}]},
        lambda i, a, b: {"id": i, "images": [a, b], "texts": [{"user": f"Compare {i}.", "assistant": "Alike."}]},
        lambda i, a, b: {"id": i, "conversations": [
            {"from": "human", "value": f"Count to {i % 10}."}, {"from": "gpt", "value": "1 2 3"}]},
    ]
    path = directory / "train.jsonl"
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps(layouts[i % 4](i, names[i % 16], names[(i * 7) % 16])) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = write_data(Path(tmp), args.records)
        config = Path(tmp) / "run.yaml"
        config.write_text(
            "tokenizer:\n  _component_: qwenvl_data.training.packaged_vocab_transform\n  max_seq_len: 512\n"
            f"dataset:\n  _component_: qwenvl_data.datasets.multimodal_chat_dataset\n  source: jsonl\n"
            f"  data_files: {data}\n  on_error: skip\n"
        )
        [(_, _, dataset)], cfg = build_datasets(str(config), [])
        indices = list(range(len(dataset)))
        start = time.perf_counter()
        for i in indices:
            dataset[i]
        reference = len(indices) / (time.perf_counter() - start)
        print(f"{len(indices)} records, {os.cpu_count()} cpus; "
              f"reference (dataset[i], 1 process): {reference:.0f} records/s")
        for workers in args.workers:
            start = time.perf_counter()
            reports = inspect_records(RecordInspector(dataset, cfg), indices, workers, progress=False)
            rate = len(reports) / (time.perf_counter() - start)
            assert all(r.cause is None for r in reports)
            print(f"inspect, {workers} process(es): {rate:.0f} records/s ({rate / reference:.2f}x the reference)")


if __name__ == "__main__":
    main()
