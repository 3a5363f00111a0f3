"""Generation speed: our KV-cached ``generate`` vs transformers' ``generate`` and vs the old re-run loop.

Model: the tiny random Qwen2.5-VL of the tests (LM 2 layers, hidden 128, real 151936-token vocabulary;
vision 2 blocks), saved once with transformers' ``save_pretrained`` and loaded by both sides.
Prompts: one image each (20x20 to 32x32 patches, 100-256 image tokens) and a question of 12-40 tokens,
from our left-padding collator. Both sides decode greedily with no stop token, so every row
generates exactly the asked number of tokens. Greedy tokens are checked equal between the two.

The re-run loop is how ``recipes/generate.py`` decoded before KV caches: one prompt at a time,
re-collated and re-run through the whole model (vision tower included) for every new token. It is
timed for one prompt at the largest token count (batch 8 would be 8 such runs one after another).

Tokens/s = rows x new tokens / time of the call (prefill included), best of ``--repeats``. The time
is wall-clock, or with ``--clock cpu`` the CPU time this process used (all its threads), which
stays meaningful on a machine shared with other jobs.

Run: python bench/generate.py [--repeats 2] [--threads 2] [--clock wall|cpu] [--tokens 64 256] [--batch-sizes 1 8]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.models_reference import hf_generate, save_random_hf_model  # noqa: E402
from support.vl_samples import vl_prompt  # noqa: E402

from qwenvl_data.collate import padded_collate_qwen2_5_vl  # noqa: E402
from qwenvl_data.generation import generate  # noqa: E402
from qwenvl_data.models import load_hf_model  # noqa: E402

# Patch grids (before the 2x2 merge): 100-256 image tokens each, what a 280-448 px photo gives.
IMAGES = [(32, 32), (20, 20), (28, 24), (24, 32), (32, 20), (28, 28), (20, 32), (24, 24)]


def prompts(batch_size: int) -> list[dict]:
    return [
        vl_prompt((("image", *IMAGES[i % len(IMAGES)]),), question_len=12 + 4 * i, seed=i) for i in range(batch_size)
    ]


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def best_times(runs: dict, repeats: int, clock) -> dict[str, tuple[float, object]]:
    """Best time and output of each run; the runs take turns, so a change in machine load hits them alike."""
    best = {name: (float("inf"), None) for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = clock()
            out = run()
            elapsed = clock() - start
            best[name] = (min(best[name][0], elapsed), out)
    return best


@torch.no_grad()
def rerun_loop(model, prompt: dict, new_tokens: int) -> list[int]:
    """The pre-KV-cache decoding: re-collate and re-run the whole sequence for every token (no stop)."""
    tokens = list(prompt["tokens"])
    for _ in range(new_tokens):
        batch = padded_collate_qwen2_5_vl([{**prompt, "tokens": tokens}])
        tokens.append(int(model(**batch)[0, -1].argmax()))
    return tokens[len(prompt["tokens"]) :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    parser.add_argument("--tokens", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--skip-rerun", action="store_true", help="do not time the old re-run loop")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = CLOCKS[args.clock]

    with tempfile.TemporaryDirectory() as model_dir:
        hf = save_random_hf_model(Path(model_dir), tie_word_embeddings=False)
        ours = load_hf_model(model_dir).eval()
    print(f"threads={args.threads}, best of {args.repeats}; tokens/s = rows x new tokens / {args.clock} seconds")
    print(f"{'rows':>4} {'new':>4} {'prompt':>6} | {'ours tok/s':>10} {'hf tok/s':>9} {'ours/hf':>7} | equal")
    for batch_size in args.batch_sizes:
        batch = padded_collate_qwen2_5_vl(prompts(batch_size), padding_side="left")
        for new_tokens in args.tokens:
            timed = best_times(
                {
                    "ours": lambda: generate(ours, batch, max_generated_tokens=new_tokens, stop_tokens=()).tokens,
                    "hf": lambda: hf_generate(hf, batch, new_tokens),
                },
                args.repeats,
                clock,
            )
            (ours_s, ours_out), (hf_s, hf_out) = timed["ours"], timed["hf"]
            generated = batch_size * new_tokens
            print(
                f"{batch_size:>4} {new_tokens:>4} {batch['tokens'].shape[1]:>6} | {generated / ours_s:>10.1f} "
                f"{generated / hf_s:>9.1f} {hf_s / ours_s:>6.2f}x | {torch.equal(ours_out, hf_out)}"
            )
    if args.skip_rerun:
        return
    new_tokens = max(args.tokens)
    prompt = prompts(1)[0]
    one = padded_collate_qwen2_5_vl([prompt])
    cached_s, cached = best_times(
        {"cached": lambda: generate(ours, one, max_generated_tokens=new_tokens, stop_tokens=()).tokens[0].tolist()},
        args.repeats,
        clock,
    )["cached"]
    rerun_s, rerun = best_times({"rerun": lambda: rerun_loop(ours, prompt, new_tokens)}, 1, clock)["rerun"]
    print(
        f"re-run loop, 1 row, {new_tokens} new tokens: {new_tokens / rerun_s:.1f} tok/s ({rerun_s:.1f} s) vs "
        f"KV-cached {new_tokens / cached_s:.1f} tok/s ({cached_s:.2f} s): {rerun_s / cached_s:.1f}x faster; "
        f"tokens equal: {cached == rerun}"
    )


if __name__ == "__main__":
    main()
