"""Packed vs padded training on the same samples: padding fraction and trained tokens per second.

Samples: a length mix like real instruction data (``--samples``, default 48, fixed seed): most are
text-only with 100-600 tokens, about a third carry 1-4 images of 64-1024 vision tokens each (the last
images dropped while a sample exceeds the limit), and one in twenty is a long one near ``--max-seq-len``
(default 2048). Built with tests/support/vl_samples.py (the
transform's exact token layout, random pixels of the real patch size).

Both sides train the tiny model (``qwen2_5_vl_tiny``; ``--model wide``: its decoder with 8 layers of 512, AdamW) with the recipe's loss path
(``trained_rows`` + ``project_trained_rows`` + ``NextTokenCrossEntropy``), one optimizer step per batch:
- padded: ``Qwen2_5_VLCollator`` batches of ``--batch-size`` samples (default 8) in dataset order;
- packed: ``PackedBatches`` (the recipes' ``dataset.packed: true``) over the same samples in the same
  order, ``--rows`` rows of ``max_seq_len`` tokens per batch (default 2), ``--buffer-size`` samples waiting
  (default 16, small against the sample count so that the last rows hold few samples of the next pass),
  until every sample was trained once.
Padding fraction = 1 - real tokens / tokens in the batches. Trained tokens/s = targets of the loss / time of
forward + backward + optimizer step (collation excluded on both sides).

Run: python bench/packing.py [--model tiny] [--samples 48] [--max-seq-len 2048] [--batch-size 8] [--rows 2] [--buffer-size 16]
     [--threads 2]
"""

import argparse
import random
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import SequentialSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.vl_samples import vl_sample  # noqa: E402

from qwenvl_data.collate import Qwen2_5_VLCollator  # noqa: E402
from qwenvl_data.models._component_builders import qwen2_5_vl  # noqa: E402
from qwenvl_data.models._model_builders import QWEN2_5_VL_TINY  # noqa: E402
from qwenvl_data.training import NextTokenCrossEntropy  # noqa: E402
from qwenvl_data.training._loss import project_trained_rows, trained_rows  # noqa: E402
from qwenvl_data.training._packed_data import PackedBatches, sample_loader  # noqa: E402
from qwenvl_data.training._model_setup import init_weights  # noqa: E402

OVERHEAD = 40  # system prompt, turn headers and vision start/end tokens of a vl_sample, about


def _image(tokens: int) -> tuple[str, int, int]:
    """An image of about ``tokens`` merged tokens: a grid of 2a x 2b patches, a * b = tokens."""
    a = max(1, int(tokens**0.5))
    return ("image", 2 * a, 2 * max(1, tokens // a))


def make_samples(count: int, max_seq_len: int, seed: int = 0) -> list[dict]:
    """The length mix described in the module docstring."""
    rng = random.Random(seed)
    samples = []
    for index in range(count):
        kind = rng.random()
        if kind < 0.05:  # a long one near the limit: a long answer after 3-4 large images
            media = [_image(rng.randint(512, 1024)) for _ in range(rng.randint(3, 4))]
            vision = sum(h * w // 4 for _, h, w in media)
            text = max(50, rng.randint(max_seq_len - 300, max_seq_len - 50) - vision - OVERHEAD)
        elif kind < 0.38:  # 1-4 images of 64-1024 tokens
            media = [_image(rng.randint(64, 1024)) for _ in range(rng.randint(1, 4))]
            text = rng.randint(60, 400)
        else:  # text only, 100-600 tokens
            media = []
            text = rng.randint(100, 600) - OVERHEAD
        answer = max(8, text // 3)
        while True:
            sample = vl_sample(media, question_len=text - answer, answer_len=answer, seed=index, sample_id=str(index))
            if len(sample["tokens"]) <= max_seq_len:
                break
            media = media[:-1]  # many large images: keep the sample, drop its last image
        samples.append(sample)
    return samples


# The tiny model's cost is mostly the 151,936-way projection of trained tokens and the vision tower, which
# padding does not change; "--model wide" gives the decoder the weight it has in real models (8 layers of 512).
MODELS = {
    "tiny": QWEN2_5_VL_TINY,
    "wide": {**QWEN2_5_VL_TINY, "num_layers": 8, "embed_dim": 512, "num_heads": 8, "intermediate_dim": 1024,
             "mrope_section": (8, 12, 12)},
}  # fmt: skip


def train(batches: list[dict], model_name: str) -> dict[str, float]:
    """One optimizer step per batch on a fresh model; returns the figures of the run."""
    torch.manual_seed(0)
    model = qwen2_5_vl(**MODELS[model_name])
    init_weights(model, 0.02)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = NextTokenCrossEntropy()
    trained = real = total = 0
    seconds = 0.0
    for batch in batches:
        start = time.perf_counter()
        rows, targets = trained_rows(batch["labels"])
        with project_trained_rows(model, rows):
            logits = model(**batch)
        (loss_fn(logits, targets) / max(targets.numel(), 1)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds += time.perf_counter() - start
        trained += targets.numel()
        real += int(batch["attention_mask"].sum())
        total += batch["tokens"].numel()
    return {"seconds": seconds, "trained": trained, "padding": 1 - real / total, "tokens_per_s": trained / seconds,
            "batches": len(batches), "rows": sum(b["tokens"].shape[0] for b in batches)}  # fmt: skip


def padded_batches(samples: list[dict], batch_size: int) -> list[dict]:
    collate = Qwen2_5_VLCollator()
    return [collate(samples[i : i + batch_size]) for i in range(0, len(samples), batch_size)]


def packed_batches(samples: list[dict], max_seq_len: int, rows: int, buffer_size: int) -> list[dict]:
    """Batches from the recipes' packer until every sample has been in a row once (the stream goes on)."""
    packer = PackedBatches(sample_loader(samples, SequentialSampler(samples), 0), max_seq_len, rows, buffer_size)
    batches = []
    while True:
        batches.append(next(packer))
        state = packer.state_dict()  # read up to `offset`; from `anchor_offset` on, only `emitted` left the buffer
        anchor, emitted = state["anchor_offset"], set(state["emitted"])
        if state["offset"] >= len(samples) and all(o - anchor in emitted for o in range(anchor, len(samples))):
            return batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--max-seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--buffer-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    samples = make_samples(args.samples, args.max_seq_len)
    lengths = sorted(len(s["tokens"]) for s in samples)
    with_images = sum("pixel_values" in s for s in samples)
    print(f"model {args.model}; {len(samples)} samples, {with_images} with images; tokens: median {lengths[len(lengths) // 2]}, "
          f"min {lengths[0]}, max {lengths[-1]}, total {sum(lengths)}; max_seq_len {args.max_seq_len}")  # fmt: skip
    padded = train(padded_batches(samples, args.batch_size), args.model)
    packed = train(packed_batches(samples, args.max_seq_len, args.rows, args.buffer_size), args.model)
    for name, figures in (("padded", padded), ("packed", packed)):
        print(f"{name}: {figures['batches']} batches, {figures['rows']} rows, padding {figures['padding']:.1%}, "
              f"{figures['trained']} trained tokens in {figures['seconds']:.1f}s = "
              f"{figures['tokens_per_s']:.0f} trained tokens/s")  # fmt: skip
    print(f"packed / padded trained tokens/s: {packed['tokens_per_s'] / padded['tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
