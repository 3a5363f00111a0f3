"""Forward + backward of our model vs transformers' on the same weights and batch; prints ratios.

``--family qwen2_5_vl`` (default): a small random Qwen2.5-VL on the real vocabulary (LM 4 layers, hidden 256,
8/2 heads; vision 4 blocks, hidden 128, one full-attention block, window 112 px). ``--family qwen3_vl``: a
small random Qwen3-VL of the same widths (head_dim 32, interleaved MRoPE; vision 4 blocks, DeepStack after
blocks 0-2, an 8 x 8 position table). The model is saved once with transformers' ``save_pretrained`` and
loaded by both sides. Batch: 4 samples with 2-3 images each of different sizes (one sample also a video),
right padded (Qwen2.5-VL: from our collator; Qwen3-VL: in its token layout, timestamps before each frame,
position ids from transformers' ``get_rope_index``).

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

Run: python bench/model.py [--family qwen3_vl] [--repeats 3] [--threads 2] [--answer-len 1024]
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.vl_samples import vl_sample  # noqa: E402

from qwenvl_data._constants import IGNORE_INDEX, TOKENS_PER_SECOND, VOCAB_SIZE  # noqa: E402
from qwenvl_data.collate import padded_collate_qwen2_5_vl  # noqa: E402

MEDIA = [
    (("image", 28, 28), ("image", 36, 20)),
    (("image", 16, 44), ("video", 4, 20, 20, 1.0)),
    (("image", 40, 24), ("image", 12, 12), ("image", 20, 32)),
    (("image", 24, 24),),
]


def bench_config():
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=VOCAB_SIZE, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
            num_attention_heads=8, num_key_value_heads=2, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]},
        ),
        vision_config=dict(
            depth=4, hidden_size=128, intermediate_size=256, num_heads=4, out_hidden_size=256,
            fullatt_block_indexes=[3], window_size=112, tokens_per_second=TOKENS_PER_SECOND,
        ),
        tie_word_embeddings=True,
    )  # fmt: skip


def qwen3_vl_bench_config():
    from transformers import Qwen3VLConfig

    return Qwen3VLConfig(
        text_config=dict(
            vocab_size=VOCAB_SIZE, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
            num_attention_heads=8, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [6, 5, 5],
                             "mrope_interleaved": True},
        ),
        vision_config=dict(
            depth=4, hidden_size=128, intermediate_size=256, num_heads=4, out_hidden_size=256,
            num_position_embeddings=64, deepstack_visual_indexes=[0, 1, 2],
        ),
        tie_word_embeddings=True,
    )  # fmt: skip


def make_batch(family: str, answer_len: int = 8) -> dict:
    if family == "qwen2_5_vl":
        samples = [vl_sample(m, question_len=40, answer_len=answer_len, seed=i) for i, m in enumerate(MEDIA)]
        return padded_collate_qwen2_5_vl(samples)
    from support.qwen3_vl_reference import qwen3_vl_batch, qwen3_vl_sample
    from transformers import Qwen3VLForConditionalGeneration

    # Qwen3-VL's media items: ("video", t, h, w) without seconds (its timestamps are text).
    media = [tuple(item[:4] if item[0] == "video" else item for item in row) for row in MEDIA]
    samples = [qwen3_vl_sample(m, text_len=20, answer_len=answer_len, seed=i) for i, m in enumerate(media)]
    with torch.device("meta"):  # only its config is read, by get_rope_index
        reference = Qwen3VLForConditionalGeneration(qwen3_vl_bench_config())
    return qwen3_vl_batch(samples, reference)


# family -> (transformers' class name, the bench model's config)
FAMILIES = {
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", bench_config),
    "qwen3_vl": ("Qwen3VLForConditionalGeneration", qwen3_vl_bench_config),
}


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


def child(side: str, family: str, model_dir: str, repeats: int, threads: int, answer_len: int) -> None:
    torch.set_num_threads(threads)
    batch, long_batch = make_batch(family), make_batch(family, answer_len)
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
        import transformers

        model = getattr(transformers, FAMILIES[family][0]).from_pretrained(model_dir)
        keys = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")

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
        out = visual(pixels, grids)
        return (out if side == "ours" else out.pooler_output).square().mean()

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
    parser.add_argument("--family", choices=sorted(FAMILIES), default="qwen2_5_vl")
    parser.add_argument("--child", choices=["ours", "hf"])
    parser.add_argument("--model-dir")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.family, args.model_dir, args.repeats, args.threads, args.answer_len)
        return

    import transformers

    class_name, config = FAMILIES[args.family]
    with tempfile.TemporaryDirectory() as model_dir:
        torch.manual_seed(0)
        getattr(transformers, class_name)(config()).save_pretrained(model_dir)
        results = {}
        for side in ("hf", "ours"):
            command = [sys.executable, __file__, "--child", side, "--family", args.family, "--model-dir", model_dir,
                       "--repeats", str(args.repeats), "--threads", str(args.threads),
                       "--answer-len", str(args.answer_len)]  # fmt: skip
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[side] = json.loads(output.strip().splitlines()[-1])
    ours, hf = results["ours"], results["hf"]
    print(f"{args.family}; batch: {len(MEDIA)} rows, {ours['tokens']} real tokens "
          f"({ours['long_tokens']} with long answers), "
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
