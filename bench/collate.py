"""Collate + MRoPE positions vs transformers' get_rope_index on the same batches; prints ratios.

Batches: 8 samples of ~4k tokens, each with several images of different sizes (and one with a
video), right padded. Five comparisons; each times ours and the reference alternately and keeps
the best of ``--repeats`` runs of each (the machine is shared, best-of is the least noisy), with
``--threads`` torch threads (default 1, as in a DataLoader worker):

1. positions only: ``mrope_position_ids`` vs the family's ``get_rope_index`` (``Qwen2_5_VLModel``'s,
   ``Qwen2VLModel``'s with ``--family qwen2_vl``, ``Qwen3VLModel``'s with ``--family qwen3_vl``, whose samples are
   in its layout: 1536-value patches, a timestamped span per temporal patch of the video) on the padded batch, by
   the family's video position rule.
2. our whole collate (samples with list ids -> padded tensors, validation, positions), pixel copy
   left out (zero-width patch views), vs get_rope_index alone on ready tensors. Ours pays for
   turning ~64k Python ints into tensors here, which get_rope_index does not; 2b. gives the
   samples' ids as tensors instead.
3. the same collate vs transformers-style batching of the same samples (torch.tensor + pad_sequence
   for tokens and labels) + get_rope_index: the same inputs and outputs on both sides.
4. full collate including the ~210 MB pixel-patch concatenation, vs 3. plus the same concatenation.

Run: python bench/collate.py [--family qwen2_vl] [--repeats 30] [--threads 1]
"""

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _family import add_family_option, family_under_test  # noqa: E402
from support.vl_samples import hf_rope_index, vl_sample  # noqa: E402

from qwenvl_data._constants import IGNORE_INDEX, PAD_ID  # noqa: E402
from qwenvl_data.collate import padded_collate_qwen2_5_vl  # noqa: E402
from qwenvl_data.rope import mrope_position_ids  # noqa: E402

IMAGE_GRIDS = [(40, 40), (28, 44), (60, 36), (20, 20), (16, 52), (34, 34)]


def make_batch(family: str, batch_size: int = 8, target_len: int = 4096) -> list[dict]:
    """``batch_size`` samples of about ``target_len`` tokens with 3-6 images each (sample 0 also a video), in the
    layout of ``family``'s transform."""
    samples = []
    for i in range(batch_size):
        media = [("image", *IMAGE_GRIDS[(i + k) % len(IMAGE_GRIDS)]) for k in range(3 + i % 4)]
        if i == 0:
            media.append(("video", 8, 24, 32, 1.0))
        image_tokens = sum(h * w // 4 for _, h, w in media[: 3 + i % 4]) + (8 * 24 * 32 // 4 if i == 0 else 0)
        question_len = max(16, target_len - image_tokens - 200 - 37 * i)
        samples.append(vl_sample(media, question_len=question_len, answer_len=150, seed=i, family=family))
    return samples


def hf_style_batch(samples: list[dict], model_type: str) -> dict:
    """What a transformers pipeline does for the same samples: pad ids, concatenate pixels, the family's
    get_rope_index."""
    tokens = torch.nn.utils.rnn.pad_sequence(
        [torch.tensor(s["tokens"]) for s in samples], batch_first=True, padding_value=PAD_ID
    )
    labels = torch.nn.utils.rnn.pad_sequence(
        [torch.tensor(s["labels"]) for s in samples], batch_first=True, padding_value=IGNORE_INDEX
    )
    attention_mask = tokens != PAD_ID
    batch = {"tokens": tokens, "labels": labels, "attention_mask": attention_mask}
    for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts"):
        parts = [s[key] for s in samples if key in s]
        if parts:
            batch[key] = torch.cat(parts)
    batch["position_ids"], batch["rope_deltas"] = hf_rope_index(
        tokens,
        batch.get("image_grid_thw"),
        batch.get("video_grid_thw"),
        batch.get("second_per_grid_ts"),
        attention_mask,
        model_type,
    )
    return batch


def best_seconds(ours: Callable[[], object], reference: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Best wall time of each, measured alternately so that both see the same machine load."""
    best = [float("inf"), float("inf")]
    for _ in range(repeats + 1):  # the first round warms up
        for k, fn in enumerate((ours, reference)):
            start = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - start)
    return best[0], best[1]


def report(name: str, seconds: tuple[float, float]) -> None:
    ours, reference = seconds
    timings = f"ours {ours * 1e3:8.2f} ms   reference {reference * 1e3:8.2f} ms"
    print(f"{name:<52} {timings}   ratio {reference / ours:6.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    add_family_option(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rule = family_under_test(args.family).family.position_rule

    def collate(samples: list[dict]) -> dict:
        return padded_collate_qwen2_5_vl(samples, position_rule=rule)

    def reference_batch(samples: list[dict]) -> dict:
        return hf_style_batch(samples, args.family)

    samples = make_batch(args.family)
    batch = collate(samples)
    reference = reference_batch(samples)
    assert torch.equal(batch["position_ids"], reference["position_ids"]), "positions differ from get_rope_index"
    assert torch.equal(batch["rope_deltas"], reference["rope_deltas"])
    lengths = batch["attention_mask"].sum(1).tolist()
    print(
        f"batch: {len(samples)} samples, {min(lengths)}..{max(lengths)} tokens, "
        f"{len(batch['image_grid_thw'])} images, {len(batch['video_grid_thw'])} video, "
        f"{batch['pixel_values'].numel() * 4 / 2**20:.0f} MiB image patches; torch threads {torch.get_num_threads()}; "
        f"{args.family}"
    )

    grids = {key: batch.get(key) for key in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")}
    tokens, mask = batch["tokens"], batch["attention_mask"]
    rope_index = lambda: hf_rope_index(tokens, attention_mask=mask, model_type=args.family, **grids)  # noqa: E731
    ours_positions = lambda: mrope_position_ids(tokens, attention_mask=mask, tokens_per_second=rule.tokens_per_second,  # noqa: E731
                                                frames_apart=rule.frames_apart, **grids)  # fmt: skip
    report("1. positions (mrope vs get_rope_index)", best_seconds(ours_positions, rope_index, args.repeats))

    text_side = [{k: v for k, v in s.items() if not k.startswith("pixel_values")} for s in samples]
    for sample, original in zip(text_side, samples):  # keep the grids valid: patches as empty-width views
        for key in ("pixel_values", "pixel_values_videos"):
            if key in original:
                sample[key] = original[key][:, :0]
    report(
        "2. collate w/o pixel copy vs get_rope_index",
        best_seconds(lambda: collate(text_side), rope_index, args.repeats),
    )
    tensor_ids = [{**s, "tokens": torch.tensor(s["tokens"]), "labels": torch.tensor(s["labels"])} for s in text_side]
    report(
        "2b. as 2., samples' ids given as tensors",
        best_seconds(lambda: collate(tensor_ids), rope_index, args.repeats),
    )
    report(
        "3. collate w/o pixel copy vs pad + get_rope_index",
        best_seconds(lambda: collate(text_side), lambda: reference_batch(text_side), args.repeats),
    )
    report(
        "4. full collate vs pad + cat + get_rope_index",
        best_seconds(lambda: collate(samples), lambda: reference_batch(samples), args.repeats),
    )


if __name__ == "__main__":
    main()
