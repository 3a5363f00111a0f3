"""Answer questions about images with a fine-tuned Qwen2.5-VL checkpoint, and score it on a dataset.

Run from the repository root:
    # one question
    tune run recipes/generate.py --config configs/generate.yaml \
        checkpoint_dir=outputs/tiny_synthetic/hf_model prompt="What color is the circle?" 'images=[photo.png]'
    # accuracy on a dataset (exact match of the generated answer)
    tune run recipes/generate.py --config configs/generate.yaml checkpoint_dir=... dataset.num_samples=64

Decoding is greedy. It imports nothing from `recipes.*` (torchtune's wheel owns that name).
"""

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torchtune import config, training, utils

from qwenvl_data.training import greedy_answer, split_prompt_and_answer
from qwenvl_data.training._config import build, check_config_keys

REQUIRED_KEYS = ("checkpoint_dir", "model", "tokenizer", "collate_fn")
OPTIONAL_KEYS = ("device", "dtype", "seed", "prompt", "images", "dataset", "max_samples", "max_new_tokens", "output_dir")


class GenerateRecipe:
    """setup(cfg) loads the HF checkpoint and the transform; generate() answers; cleanup() is a no-op."""

    def __init__(self, cfg: DictConfig) -> None:
        check_config_keys(cfg, type(self).__name__, REQUIRED_KEYS, OPTIONAL_KEYS)
        if cfg.get("prompt") is None and cfg.get("dataset") is None:
            raise ValueError("GenerateRecipe: set `prompt` (one question, takes precedence) or `dataset` (accuracy)")
        self.device = utils.get_device(cfg.get("device", "cpu"))
        self.dtype = training.get_dtype(cfg.get("dtype", "fp32"), device=self.device)
        self.max_new_tokens = int(cfg.get("max_new_tokens", 32))

    def setup(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        torch.manual_seed(int(cfg.get("seed", 0)))
        self.transform = build(cfg, "tokenizer")
        self.collate_fn = build(cfg, "collate_fn")
        self.model = build(cfg, "model").to(device=self.device, dtype=self.dtype).eval()
        answer_prompt = cfg.get("prompt") is not None
        self.dataset = None if answer_prompt else build(cfg, "dataset", self.transform)

    def _answer(self, sample: dict[str, Any], prompt: list[int]) -> list[int]:
        return greedy_answer(
            self.model, sample, prompt, self.collate_fn, device=self.device, dtype=self.dtype,
            max_new_tokens=self.max_new_tokens,
        )  # fmt: skip

    def generate(self) -> dict[str, Any]:
        """Answer `prompt` if set, else every dataset sample (scoring exact token match); print the results."""
        if self.dataset is None:
            return self._answer_prompt()
        return self._score_dataset()

    def _answer_prompt(self) -> dict[str, Any]:
        content = [{"type": "image", "image": str(path)} for path in self.cfg.get("images") or []]
        content.append({"type": "text", "text": str(self.cfg.prompt)})
        sample = self.transform({"messages": [{"role": "user", "content": content}]}, inference=True)
        answer = self.transform.decode(self._answer(sample, sample["tokens"]))
        print(answer, flush=True)
        return {"prompt": str(self.cfg.prompt), "answer": answer}

    def _score_dataset(self) -> dict[str, Any]:
        limit = self.cfg.get("max_samples")
        count = len(self.dataset) if limit is None else min(int(limit), len(self.dataset))
        records = []
        for index in range(count):
            sample = self.dataset[index]
            if sample is None:  # skipped by the dataset (on_error="skip"), counted in its stats
                continue
            prompt, reference = split_prompt_and_answer(sample)
            generated = self._answer(sample, prompt)
            records.append({
                "id": sample.get("id", index), "answer": self.transform.decode(generated),
                "reference": self.transform.decode(reference), "correct": generated == reference,
            })  # fmt: skip
        correct = sum(r["correct"] for r in records)
        result = {"accuracy": correct / len(records) if records else 0.0, "correct": correct, "total": len(records)}
        print(f"accuracy: {result['accuracy']:.1%} ({correct}/{len(records)} exact answers)", flush=True)
        if self.cfg.get("output_dir"):
            out = Path(self.cfg.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            (out / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
            (out / "generate_metrics.json").write_text(json.dumps(result, indent=2))
            print(f"answers: {out / 'answers.jsonl'}", flush=True)
        return {**result, "records": records}

    def cleanup(self) -> None:
        """Nothing to release: no process group, no open files."""


@config.parse
def recipe_main(cfg: DictConfig) -> None:
    recipe = GenerateRecipe(cfg)
    recipe.setup(cfg)
    recipe.generate()
    recipe.cleanup()


if __name__ == "__main__":
    recipe_main()
