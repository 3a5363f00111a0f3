"""Forward + backward of our model vs transformers' on the same weights and batch, per family; prints ratios.

Model: a small random model of the ``--family`` (default Qwen2.5-VL) on the real vocabulary (LM 4 layers, hidden
256, 8/2 heads; vision 4 blocks, hidden 128, MLP 256; Qwen2.5-VL: one full-attention block, window 112 px;
Qwen2-VL: full attention in every block; Qwen3-VL: patch 16, head_dim 48, DeepStack after blocks 0 and 1, whose
features count in the vision-only case), saved once with transformers' ``save_pretrained`` and loaded by both sides. Batch: 4 samples from our collator with 2-3 images each of different sizes (one sample also a video), right
padded, with the family's video positions.

Three measurements per side: the vision tower alone (where block-wise attention differs from
transformers' one-SDPA-call-per-window loop); the whole model with the token cross-entropy
(dominated by the 151936-wide output layer) on short answers (8 trained tokens per row); and the
same with long answers (``--answer-len``, default 1024 trained tokens per row), where the
[trained tokens, 151936] logits decide the memory. transformers' side is what a user of
``Qwen2_5_VLForConditionalGeneration`` runs: logits for every position, cross-entropy with
ignore_index; ours is what the recipes run: the trained rows' hidden states through
``NextTokenCrossEntropy`` (chunked output projection) inside the forward. Each side runs in its
own subprocess so their peak memories do not mix:
- peak memory: peak RSS during the first forward+backward minus the RSS just before it
  (Linux VmHWM, reset through /proc/self/clear_refs), i.e. activations, gradients and
  temporaries (the whole-model figure includes the vision part's);
- time: best of ``--repeats`` forward+backward passes after that.

Run: python bench/model.py [--family qwen2_vl] [--repeats 3] [--threads 2] [--answer-len 1024]
"""

import argparse
import inspect
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _family import add_family_option, family_under_test  # noqa: E402
from support.vl_samples import vl_sample  # noqa: E402

from qwenvl_data._constants import IGNORE_INDEX  # noqa: E402
from qwenvl_data.collate import padded_collate_qwen2_5_vl  # noqa: E402

MEDIA = [
    (("image", 28, 28), ("image", 36, 20)),
    (("image", 16, 44), ("video", 4, 20, 20, 1.0)),
    (("image", 40, 24), ("image", 12, 12), ("image", 20, 32)),
    (("image", 24, 24),),
]


# The bench model's sizes, for every family's ``hf_config`` (tests/support/families.py).
BENCH_SIZES = dict(vision_depth=4, vision_width=128, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                   num_attention_heads=8)  # fmt: skip


def make_batch(model_type: str, answer_len: int = 8) -> dict:
    """The samples in the family's layout (Qwen3-VL: 1536-value patches, timestamped video spans), collated with its
    position rule."""
    samples = [vl_sample(m, question_len=40, answer_len=answer_len, seed=i, family=model_type)
               for i, m in enumerate(MEDIA)]  # fmt: skip
    return padded_collate_qwen2_5_vl(samples, position_rule=family_under_test(model_type).family.position_rule)


def loss_of(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def _reset_peak_rss() -> int:
    """Make the kernel's peak-RSS counter (VmHWM) restart from now; returns the current RSS in KiB."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return _status_kib("VmRSS")


def child(side: str, model_type: str, model_dir: str, repeats: int, threads: int, answer_len: int) -> None:
    torch.set_num_threads(threads)
    batch, long_batch = make_batch(model_type), make_batch(model_type, answer_len)
    if side == "ours":
        from qwenvl_data.models import load_hf_model
        from qwenvl_data.training import NextTokenCrossEntropy
        from qwenvl_data.training._loss import output_loss, trained_rows

        model = load_hf_model(model_dir)
        loss_fn = NextTokenCrossEntropy()

        def loss_step(batch: dict) -> torch.Tensor:
            rows, targets = trained_rows(batch["labels"])
            with output_loss(model, rows, targets, loss_fn):
                return model(**batch) / targets.numel()
    else:
        model = family_under_test(model_type).hf_class.from_pretrained(model_dir)
        taken = inspect.signature(model.forward).parameters  # Qwen2-VL has no second_per_grid_ts
        keys = [k for k in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw",
                            "second_per_grid_ts") if k in taken]  # fmt: skip

        def loss_step(batch: dict) -> torch.Tensor:
            logits = model(
                input_ids=batch["tokens"],
                attention_mask=batch["attention_mask"].long(),
                position_ids=batch["position_ids"],
                **{k: batch[k] for k in keys if k in batch},
            ).logits
            return loss_of(logits, batch["labels"])

    model.train()
    visual = model.visual if side == "ours" else model.model.visual
    pixels = torch.cat([batch["pixel_values"], batch["pixel_values_videos"]])
    grids = torch.cat([batch["image_grid_thw"], batch["video_grid_thw"]])

    def vision_step() -> torch.Tensor:
        """The merged features and, for Qwen3-VL, its DeepStack features: what the language model receives."""
        if side == "ours":
            features, deepstack = visual(pixels, grids, with_deepstack=True)
        else:
            out = visual(pixels, grids)
            features, deepstack = out.pooler_output, getattr(out, "deepstack_features", None) or []
        return sum(part.square().mean() for part in (features, *deepstack))

    result = {"tokens": int(batch["attention_mask"].sum()), "patches": pixels.shape[0],
              "long_tokens": int(long_batch["attention_mask"].sum())}  # fmt: skip
    cases = (("vision", vision_step), ("full", lambda: loss_step(batch)), ("long", lambda: loss_step(long_batch)))
    for name, run in cases:
        rss_before = _reset_peak_rss()
        run().backward()
        result[f"{name}_peak_mib"] = (_status_kib("VmHWM") - rss_before) / 1024
        model.zero_grad(set_to_none=True)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            run().backward()
            best = min(best, time.perf_counter() - start)
            model.zero_grad(set_to_none=True)
        result[f"{name}_seconds"] = best
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--answer-len", type=int, default=1024, help="trained tokens per row in the long-answer case")
    parser.add_argument("--child", choices=["ours", "hf"])
    parser.add_argument("--model-dir")
    add_family_option(parser)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.family, args.model_dir, args.repeats, args.threads, args.answer_len)
        return

    family = family_under_test(args.family)
    with tempfile.TemporaryDirectory() as model_dir:
        torch.manual_seed(0)
        family.hf_class(family.hf_config(tie_word_embeddings=True, **BENCH_SIZES)).save_pretrained(model_dir)
        results = {}
        for side in ("hf", "ours"):
            command = [sys.executable, __file__, "--child", side, "--family", args.family, "--model-dir", model_dir,
                       "--repeats", str(args.repeats), "--threads", str(args.threads),
                       "--answer-len", str(args.answer_len)]  # fmt: skip
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[side] = json.loads(output.strip().splitlines()[-1])
    ours, hf = results["ours"], results["hf"]
    print(f"{args.family} ({family.hf_class.__name__}); "
          f"batch: {len(MEDIA)} rows, {ours['tokens']} real tokens ({ours['long_tokens']} with long answers), "
          f"{ours['patches']} patches; threads={args.threads}")  # fmt: skip
    titles = (("vision", "vision tower only"), ("full", "whole model + loss"), ("long", "long answers"))
    for name, title in titles:
        for side, r in (("transformers", hf), ("ours", ours)):
            print(f"{title:>18} {side:>12}: forward+backward {r[f'{name}_seconds'] * 1000:8.1f} ms, "
                  f"peak extra memory {r[f'{name}_peak_mib']:8.1f} MiB")  # fmt: skip
        print(f"{title:>18} ratio ours/transformers: time {ours[f'{name}_seconds'] / hf[f'{name}_seconds']:.2f}x, "
              f"peak memory {ours[f'{name}_peak_mib'] / hf[f'{name}_peak_mib']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
