"""Training at released sizes on one GPU, ours vs transformers on the same batch: speed, MFU, memory, parity.

Random weights (nothing is downloaded). Cases, each a row of the printed table and an entry of the
JSON report:
- ``3b_full``: Qwen2.5-VL-3B full fine-tune step (AdamW, bf16 weights, activation checkpointing),
  ours (the recipes' step: trained-row hidden states through the chunked output loss) with
  ``compile`` off and on, vs ``Qwen2_5_VLForConditionalGeneration`` (``attn_implementation="sdpa"``,
  gradient checkpointing, ``labels=`` loss), loaded from the directory ours was saved to: same weights.
- ``3b_parity``: bf16 logits of both on one row, relative error ||ours - hf|| / ||hf|| over real tokens.
- ``7b_lora``: Qwen2.5-VL-7B LoRA (rank 16, attention + MLP of the language model) step, ours vs
  transformers + PEFT with the same adapter layout. Each side has its own random init: speed and
  memory do not depend on the weights' values (parity is checked at 3B).
- ``3b_packed``: tokens/s of the 3B step on a length mix, packed rows vs padded rows, same samples.
- ``3b_generate``: KV-cached greedy generation (``qwenvl_data.generation.generate``) of ``--new-tokens`` tokens
  for 8 left-padded prompts with one image each, no stop token, vs transformers' ``generate``; tokens/s.
- ``3b_fsdp2_tune_run``: ``tune run --nproc_per_node 1 recipes/full_finetune_distributed.py`` with
  ``configs/qwen2_5_vl_3b_full_single_device.yaml`` for a few steps on a small generated JSONL dataset.

Batch (default): 4 rows x 4096 tokens, each row 4 images of 256 vision tokens (448x448 px) and a
512-token answer (the trained tokens). Throughput is real tokens per second of the optimizer step
(forward, backward, AdamW), best of ``--steps`` after one warm-up step. MFU = model FLOPs / time /
the GPU's dense bf16 peak, with model FLOPs = 2 x (1 + g) x (language-model parameters x tokens +
vision parameters x patches), g = 2 for a full fine-tune (input and weight gradients) and 1 for
LoRA (input gradients only); attention FLOPs are left out, so MFU is a lower bound. Peak memory is
``torch.cuda.max_memory_allocated`` over the timed steps (weights, optimizer state, activations).

``--smoke`` runs every case on the CPU with the tiny model and a small batch, so the script is
tested in CI and never rots; its figures mean nothing.

Run: bash bench/gpu_check.sh [--smoke] [--out outputs/gpu_check.json]
"""

import argparse
import functools
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from support.models_reference import hf_generate  # noqa: E402
from support.vl_samples import vl_prompt, vl_sample  # noqa: E402

from qwenvl_data.collate import padded_collate_qwen2_5_vl  # noqa: E402
from qwenvl_data.generation import generate  # noqa: E402
from qwenvl_data.models import (  # noqa: E402
    lora_qwen2_5_vl_7b,
    lora_qwen2_5_vl_tiny,
    qwen2_5_vl_3b,
    qwen2_5_vl_tiny,
    save_hf_model,
)
from qwenvl_data.packing import packed_collate_qwen2_5_vl  # noqa: E402
from qwenvl_data.training import NextTokenCrossEntropy  # noqa: E402
from qwenvl_data.training._data import move_to_device  # noqa: E402
from qwenvl_data.training._distributed import apply_activation_checkpointing, compile_blocks  # noqa: E402
from qwenvl_data.training._loss import output_loss, trained_rows  # noqa: E402
from qwenvl_data.training._model_setup import init_weights  # noqa: E402
from qwenvl_data.vocab import qwen_vocab_files  # noqa: E402

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, by device-name substring.
PEAK_BF16 = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}
LORA_ATTN = ["q_proj", "k_proj", "v_proj", "output_proj"]
PEFT_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
BATCH_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU, small batch")
    parser.add_argument("--out", default="outputs/gpu_check.json", help="JSON report path")
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per case (after 1 warm-up)")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--images-per-row", type=int, default=4)
    parser.add_argument("--image-tokens", type=int, default=256, help="merged vision tokens per image (square)")
    parser.add_argument("--answer-len", type=int, default=512, help="trained tokens per row")
    parser.add_argument("--new-tokens", type=int, default=256, help="tokens generated per prompt (3b_generate)")
    parser.add_argument("--skip", nargs="*", default=[], help="case names to leave out")
    args = parser.parse_args()
    if args.smoke:
        args.rows, args.seq_len, args.images_per_row, args.image_tokens, args.answer_len = 2, 160, 1, 16, 24
        args.steps, args.new_tokens = 1, 8
    return args


# ---- batches -----------------------------------------------------------------------------------
def _row(seed: int, length: int, images: int, image_tokens: int, answer_len: int) -> dict:
    side = 2 * round(image_tokens**0.5)  # patches per side before the 2x2 merge
    media = tuple(("image", side, side) for _ in range(images))
    fixed = len(vl_sample(media, question_len=0, answer_len=answer_len)["tokens"])
    if fixed > length:
        raise ValueError(f"a row of {length} tokens cannot hold {images} images and a {answer_len}-token answer")
    return vl_sample(media, question_len=length - fixed, answer_len=answer_len, seed=seed)


def training_batch(args: argparse.Namespace) -> dict:
    rows = [_row(i, args.seq_len, args.images_per_row, args.image_tokens, args.answer_len) for i in range(args.rows)]
    return padded_collate_qwen2_5_vl(rows)


def length_mix(args: argparse.Namespace) -> list[dict]:
    """Samples from a quarter to the whole row length, some with images: what packing is for."""
    lengths = [args.seq_len // 4, args.seq_len // 2, args.seq_len * 3 // 4, args.seq_len // 3] * args.rows
    return [
        _row(100 + i, n, i % 2, args.image_tokens, min(args.answer_len, n // 4)) for i, n in enumerate(lengths)
    ]


# ---- measuring ---------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_reset(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def timed_steps(step: Callable[[dict], None], batches: list[dict], steps: int, device: torch.device) -> dict:
    """One warm-up pass over `batches`, then the best of `steps` passes; tokens/s over real tokens."""
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    padded = sum(b["tokens"].numel() for b in batches)
    for batch in batches:
        step(batch)
    _sync(device)
    _peak_reset(device)
    best = float("inf")
    for _ in range(steps):
        start = time.perf_counter()
        for batch in batches:
            step(batch)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return {"seconds": best, "tokens_per_s": tokens / best, "padding": 1 - tokens / padded,
            "peak_gib": _peak_gib(device)}  # fmt: skip


def generation_prompts(args: argparse.Namespace) -> dict:
    """8 prompts of different lengths, one image each, left padded (what ``generate`` takes)."""
    side = 2 * round(args.image_tokens**0.5)
    prompts = [vl_prompt((("image", side, side),), question_len=8 + 5 * i, seed=i) for i in range(8)]
    return padded_collate_qwen2_5_vl(prompts, padding_side="left")


def timed_generation(run: Callable[[], object], prompts: dict, new_tokens: int, device: torch.device) -> dict:
    """One warm-up call, then one timed: generated tokens per second over the batch."""
    with torch.no_grad():
        run()
        _sync(device)
        start = time.perf_counter()
        run()
        _sync(device)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens_per_s": prompts["tokens"].shape[0] * new_tokens / seconds}


def model_flops(model: torch.nn.Module, batches: list[dict], lora: bool) -> float:
    """2 x (1 + gradient passes) x (LM params x tokens + vision params x patches); see the module docstring."""
    vision = sum(p.numel() for n, p in model.named_parameters() if n.startswith("visual.") and "lora_" not in n)
    language = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("visual.") and "lora_" not in n)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    patches = sum(int(b[k].shape[0]) for b in batches for k in ("pixel_values", "pixel_values_videos") if k in b)
    return 2 * (2 if lora else 3) * (language * tokens + vision * patches)


def mfu(flops: float, seconds: float, device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    peak = next((value for key, value in PEAK_BF16.items() if key in name), None)
    return None if peak is None else flops / seconds / peak


def _optimizer(model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    trainable = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(trainable, lr=1e-5, fused=device.type == "cuda")


# ---- the two sides -----------------------------------------------------------------------------
def our_step(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> Callable[[dict], None]:
    """The recipes' optimizer step: loss summed over trained tokens inside the forward, then AdamW."""
    optimizer, loss_fn = _optimizer(model, device), NextTokenCrossEntropy()

    def step(batch: dict) -> None:
        batch = move_to_device(batch, device, dtype)
        rows, targets = trained_rows(batch["labels"])
        with output_loss(model, rows, targets, loss_fn):
            loss = model(**batch) / targets.numel()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def hf_inputs(batch: dict, device: torch.device, dtype: torch.dtype) -> dict:
    batch = move_to_device(batch, device, dtype)
    inputs = {k: batch[k] for k in BATCH_KEYS if k in batch}
    return {"input_ids": batch["tokens"], "attention_mask": batch["attention_mask"].long(),
            "position_ids": batch["position_ids"], **inputs}  # fmt: skip


def hf_step(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> Callable[[dict], None]:
    """What a transformers user runs: ``labels=`` (logits for every position, mean cross-entropy), AdamW."""
    optimizer = _optimizer(model, device)

    def step(batch: dict) -> None:
        loss = model(**hf_inputs(batch, device, dtype), labels=batch["labels"].to(device)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def load_transformers(model_dir: str | None, config: dict | None, device: torch.device, dtype: torch.dtype):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    if model_dir is not None:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")
    else:
        with torch.device(device):
            model = Qwen2_5_VLForConditionalGeneration._from_config(
                Qwen2_5_VLConfig.from_dict(config), dtype=dtype, attn_implementation="sdpa"
            )
    return model.to(device)


def our_model(builder: Callable[..., torch.nn.Module], device: torch.device, dtype: torch.dtype, **kwargs):
    torch.manual_seed(0)
    with torch.device(device):
        model = builder(**kwargs).to(dtype)
    init_weights(model, 0.02)
    return model


# ---- cases -------------------------------------------------------------------------------------
def case_full(args, device, dtype, work: Path, report: dict) -> str:
    """3B full fine-tune ours (compile off/on) and transformers; parity; packed vs padded. Returns the 3B dir."""
    builder = qwen2_5_vl_tiny if args.smoke else qwen2_5_vl_3b
    batches = [training_batch(args)]
    model = our_model(builder, device, dtype)
    model_dir = str(work / "model_3b")
    save_hf_model(model, model_dir)
    for name in ("vocab.json", "merges.txt"):  # the released configs read the vocabulary from checkpoint_dir
        target = Path(model_dir) / name
        if not target.exists():
            target.write_bytes(Path(dict(zip(("vocab.json", "merges.txt"), qwen_vocab_files()))[name]).read_bytes())
    parity_batch = padded_collate_qwen2_5_vl([_row(7, args.seq_len // 2, 1, args.image_tokens, args.answer_len)])
    model.eval()
    with torch.no_grad():
        ours_logits = model(**move_to_device(parity_batch, device, dtype)).float().cpu()
    prompts = generation_prompts(args)
    if "3b_generate" not in args.skip:
        run = functools.partial(generate, model, move_to_device(prompts, device, dtype),
                                max_generated_tokens=args.new_tokens, stop_tokens=())  # fmt: skip
        report["3b_generate"] = {"ours": timed_generation(run, prompts, args.new_tokens, device)}
    model.train()
    apply_activation_checkpointing(model)
    flops = model_flops(model, batches, lora=False)
    ours = timed_steps(our_step(model, device, dtype), batches, args.steps, device)
    report["3b_full"] = {"ours": {**ours, "mfu": mfu(flops, ours["seconds"], device)}}
    if "3b_packed" not in args.skip:
        samples = length_mix(args)
        padded = [padded_collate_qwen2_5_vl(samples[i : i + args.rows]) for i in range(0, len(samples), args.rows)]
        packed = [packed_collate_qwen2_5_vl(samples, max_seq_len=args.seq_len)]
        step = our_step(model, device, dtype)
        report["3b_packed"] = {"padded": timed_steps(step, padded, args.steps, device),
                               "packed": timed_steps(step, packed, args.steps, device)}  # fmt: skip
    if "compile" not in args.skip:
        compile_blocks(model)
        compiled = timed_steps(our_step(model, device, dtype), batches, args.steps, device)
        report["3b_full"]["ours_compiled"] = {**compiled, "mfu": mfu(flops, compiled["seconds"], device)}
    del model
    _peak_reset(device)

    hf = load_transformers(model_dir, None, device, dtype)
    hf.eval()
    with torch.no_grad():
        hf_logits = hf(**hf_inputs(parity_batch, device, dtype)).logits.float().cpu()
    real = parity_batch["attention_mask"].bool()
    error = (ours_logits[real] - hf_logits[real]).norm() / hf_logits[real].norm()
    report["3b_parity"] = {"relative_error": float(error), "tokens": int(real.sum())}
    if "3b_generate" not in args.skip:
        run = functools.partial(hf_generate, hf, move_to_device(prompts, device, dtype), args.new_tokens)
        report["3b_generate"]["transformers"] = timed_generation(run, prompts, args.new_tokens, device)
    report["3b_full"]["transformers"] = transformers_training(hf, batches, args.steps, device, dtype, flops)
    del hf
    _peak_reset(device)
    return model_dir


def transformers_training(hf, batches: list[dict], steps: int, device, dtype, flops: float) -> dict:
    """The transformers side of a training case, with gradient checkpointing as ours has activation checkpointing."""
    hf.train()
    hf.gradient_checkpointing_enable()
    hf.enable_input_require_grads()  # PEFT's frozen embeddings would otherwise cut the checkpointed graph
    theirs = timed_steps(hf_step(hf, device, dtype), batches, steps, device)
    return {**theirs, "mfu": mfu(flops, theirs["seconds"], device)}


def case_lora(args, device, dtype, work: Path, report: dict) -> None:
    """7B LoRA step, ours vs transformers + PEFT (same adapted modules, rank, alpha)."""
    builder = lora_qwen2_5_vl_tiny if args.smoke else lora_qwen2_5_vl_7b
    lora_args = dict(lora_attn_modules=LORA_ATTN, apply_lora_to_mlp=True, lora_rank=16, lora_alpha=32)
    batches = [training_batch(args)]
    model = our_model(builder, device, dtype, **lora_args)
    from qwenvl_data.models._convert_weights import hf_config_from_model
    from qwenvl_data.training._lora import train_adapters_only

    config = hf_config_from_model(model, dtype)
    train_adapters_only(model)
    apply_activation_checkpointing(model)
    flops = model_flops(model, batches, lora=True)
    ours = timed_steps(our_step(model, device, dtype), batches, args.steps, device)
    report["7b_lora"] = {"ours": {**ours, "mfu": mfu(flops, ours["seconds"], device)}}
    del model
    _peak_reset(device)
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        report["7b_lora"]["transformers"] = "not measured: peft is not installed (pip install -e '.[dev]')"
        return
    hf = load_transformers(None, config, device, dtype)
    hf = get_peft_model(hf, LoraConfig(r=16, lora_alpha=32, target_modules=PEFT_TARGETS, lora_dropout=0.0))
    report["7b_lora"]["transformers"] = transformers_training(hf, batches, args.steps, device, dtype, flops)
    del hf
    _peak_reset(device)


def case_tune_run(args, model_dir: str, work: Path, report: dict) -> None:
    """A few steps of the released 3B config under FSDP2 with one process, through `tune run`."""
    from PIL import Image

    data = work / "data"
    data.mkdir(exist_ok=True)
    with open(data / "train.jsonl", "w") as records:
        for i in range(16):
            Image.new("RGB", (448, 448), ((37 * i) % 256, 90, 200)).save(data / f"{i}.png")
            records.write(json.dumps({"id": str(i), "image": f"{i}.png", "conversations": [
                {"from": "human", "value": "<image>\nWhat color is this?"},
                {"from": "gpt", "value": f"Color number {i}."}]}) + "\n")  # fmt: skip
    overrides = [f"checkpoint_dir={model_dir}", f"dataset.data_files={data / 'train.jsonl'}",
                 f"output_dir={work / 'tune_run'}", "max_steps_per_epoch=3", "gradient_accumulation_steps=1",
                 "num_workers=0", "metric_logger._component_=torchtune.training.metric_logging.DiskLogger"]  # fmt: skip
    if args.smoke:
        overrides += ["device=cpu", "optimizer.fused=false", "max_pixels=50176"]
    # The config builds its model from checkpoint_dir's config.json (model_from_checkpoint): with --smoke the tiny
    # model stands in for the 3B one, same config, same recipe.
    command = ["tune", "run", "--nproc_per_node", "1", "recipes/full_finetune_distributed.py",
               "--config", "configs/qwen2_5_vl_3b_full_single_device.yaml", *overrides]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    entry = {"returncode": result.returncode, "seconds": time.perf_counter() - start,
             "last_line": (result.stdout.strip().splitlines() or [""])[-1]}  # fmt: skip
    if result.returncode != 0:
        entry["stderr_tail"] = result.stderr[-2000:]
    report["3b_fsdp2_tune_run"] = entry


# ---- report ------------------------------------------------------------------------------------
def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(report: dict) -> None:
    print(f"{'case':<28} {'tokens/s':>10} {'MFU':>6} {'peak GiB':>9} {'padding':>8}")
    for case in ("3b_full", "7b_lora", "3b_packed", "3b_generate"):
        for side, row in report.get(case, {}).items():
            if isinstance(row, str):
                print(f"{case + ' ' + side:<28} {row}")
                continue
            print(f"{case + ' ' + side:<28} {row['tokens_per_s']:>10.0f} {_fmt(row.get('mfu'), '.1%'):>6} "
                  f"{_fmt(row.get('peak_gib'), '.1f'):>9} {_fmt(row.get('padding'), '.1%'):>8}")  # fmt: skip
    for case, (num, den, what) in {"3b_full": ("ours", "transformers", "ours/transformers"),
                                   "7b_lora": ("ours", "transformers", "ours/transformers"),
                                   "3b_packed": ("packed", "padded", "packed/padded"),
                                   "3b_generate": ("ours", "transformers", "ours/transformers")}.items():  # fmt: skip
        a, b = report.get(case, {}).get(num), report.get(case, {}).get(den)
        if isinstance(a, dict) and isinstance(b, dict):
            memory = "" if a.get("peak_gib") is None else f", peak memory {a['peak_gib'] / b['peak_gib']:.2f}x"
            print(f"{case} ratio {what}: tokens/s {a['tokens_per_s'] / b['tokens_per_s']:.2f}x{memory}")
    if "3b_parity" in report:
        print(f"3b_parity bf16 logits relative error: {report['3b_parity']['relative_error']:.2e}")
    if "3b_fsdp2_tune_run" in report:
        run = report["3b_fsdp2_tune_run"]
        print(f"3b_fsdp2_tune_run exit {run['returncode']} in {run['seconds']:.0f}s: {run['last_line']}")


def main() -> None:
    args = parse_args()
    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --smoke for the CPU check of the script")
    dtype = torch.bfloat16
    report: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke)",
                    "torch": torch.__version__, "args": vars(args)}  # fmt: skip
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = case_full(args, device, dtype, work, report)
        if "7b_lora" not in args.skip:
            case_lora(args, device, dtype, work, report)
        if "3b_fsdp2_tune_run" not in args.skip:
            case_tune_run(args, model_dir, work, report)
    report["total_seconds"] = time.perf_counter() - started
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"report: {out}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
