"""Throughput of the lazy dataset + collator: samples/s with 0, 2 and 4 DataLoader workers.

Data: ``synthetic_vqa_dataset`` with real-size images (448..1024 px square, 1-2 images per sample), the
real ``Qwen2_5_VLTransform`` (real vocabulary) and ``Qwen2_5_VLCollator``, batch size 8. Every sample is
generated, drawn, tokenized, resized and patchified when it is read (nothing cached).

Reference: transformers' per-sample processing of the same samples in one process (its chat template,
tokenizer and ``Qwen2VLImageProcessorPil``; no batching). The printed ratio is ours / reference samples/s.
Worker runs include worker start-up; "steady" excludes the first batch of each run.

Run: python bench/dataloader.py [--samples 96] [--workers 0 2 4] [--image-size 448 1024]
"""

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import CHAT_TEMPLATE_PATH  # noqa: E402
from support.text_reference import hf_tokenizer, reference_ids  # noqa: E402
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil  # noqa: E402

from qwenvl_data.collate import Qwen2_5_VLCollator  # noqa: E402
from qwenvl_data.datasets import synthetic_vqa_dataset  # noqa: E402
from qwenvl_data.transform import Qwen2_5_VLTransform  # noqa: E402
from qwenvl_data.vocab import qwen_vocab_files  # noqa: E402


def ours(dataset, workers: int, batch_size: int) -> tuple[float, float]:
    """(samples/s over the whole run, samples/s after the first batch)."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=Qwen2_5_VLCollator())
    start = time.perf_counter()
    first_batch_at, seen, seen_after_first = None, 0, 0
    for batch in loader:
        seen += batch["tokens"].shape[0]
        if first_batch_at is None:
            first_batch_at = time.perf_counter()
        else:
            seen_after_first += batch["tokens"].shape[0]
    end = time.perf_counter()
    return seen / (end - start), seen_after_first / max(end - first_batch_at, 1e-9)


def reference(dataset, tokenizer, chat_template: str) -> float:
    """transformers' per-sample processing of the same generated samples, samples/s."""
    processor = Qwen2VLImageProcessorPil()
    start = time.perf_counter()
    for i in range(len(dataset)):
        messages = dataset.source[i]["messages"]
        images = [part["image"] for part in messages[0]["content"] if part["type"] == "image"]
        processor(images=images, return_tensors="pt")
        reference_ids(tokenizer, chat_template, messages)
    return len(dataset) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    parser.add_argument("--image-size", type=int, nargs=2, default=[448, 1024])
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as inside a DataLoader worker; keeps the 0-worker row comparable
    vocab = qwen_vocab_files()
    dataset = synthetic_vqa_dataset(
        Qwen2_5_VLTransform(*vocab), num_samples=args.samples, seed=0, image_size=tuple(args.image_size)
    )
    print(f"{args.samples} synthetic samples, images {args.image_size[0]}..{args.image_size[1]} px, "
          f"batch {args.batch_size}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    ref = reference(dataset, hf_tokenizer(*vocab), CHAT_TEMPLATE_PATH.read_text())
    print(f"transformers per-sample reference (1 process): {ref:7.1f} samples/s")
    base = None
    for workers in args.workers:
        total, steady = ours(dataset, workers, args.batch_size)
        base = total if base is None else base
        print(f"ours, {workers} workers: {total:7.1f} samples/s (steady {steady:7.1f})  "
              f"x{total / ref:.2f} vs reference, x{total / base:.2f} vs {args.workers[0]} workers")


if __name__ == "__main__":
    main()
