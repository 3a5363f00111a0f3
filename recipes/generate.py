"""Answer questions about images with a fine-tuned Qwen2.5-VL checkpoint, and score it on a dataset.

Run from the repository root:
    # one question (or a list: prompt='[q1, q2]', answered as one batch) about images and/or videos
    tune run recipes/generate.py --config configs/generate.yaml \
        checkpoint_dir=outputs/tiny_synthetic/hf_model prompt="What color is the circle?" 'images=[photo.png]'
    # accuracy on your records (exact match of the generated answer); without data_files: synthetic questions
    tune run recipes/generate.py --config configs/generate.yaml checkpoint_dir=... dataset.data_files=test.jsonl

Prompts are decoded in batches of `batch_size` with KV caches (`qwenvl_data.generation.generate`):
greedy by default, sampled with `temperature` > 0 (`top_k`, `top_p`, seeded by `seed`). It imports
nothing from `recipes.*` (torchtune's wheel owns that name).
"""

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig
from torchtune import config, training, utils

from qwenvl_data.datasets._processing import SkippedRecord, sample_or_skip
from qwenvl_data.datasets._stats import SkipCounts
from qwenvl_data.errors import SampleError
from qwenvl_data.generation import generate
from qwenvl_data.generation._generate import new_token_budget
from qwenvl_data.training import QuestionTransform, collator_for_model, prompt_and_reference, prompt_sample
from qwenvl_data.training._config import build, check_config_keys
from qwenvl_data.training._data import move_to_device
from qwenvl_data.training._mixture_config import check_not_a_mixture
from qwenvl_data.training._position_rule import check_transform_for_model
from qwenvl_data.training._refusal import refusals_in_one_line

REQUIRED_KEYS = ("checkpoint_dir", "model", "tokenizer", "collate_fn")
OPTIONAL_KEYS = (
    "device", "dtype", "seed", "prompt", "images", "videos", "dataset", "max_samples", "max_new_tokens", "output_dir",
    "batch_size", "temperature", "top_k", "top_p", "max_generated_tokens",
)  # fmt: skip
DEFAULT_MAX_NEW_TOKENS = 32


class GenerateRecipe:
    """setup(cfg) loads the HF checkpoint and the transform; generate() answers; cleanup() is a no-op."""

    def __init__(self, cfg: DictConfig) -> None:
        check_config_keys(cfg, type(self).__name__, REQUIRED_KEYS, OPTIONAL_KEYS)
        if cfg.get("prompt") is None and cfg.get("dataset") is None:
            raise ValueError("GenerateRecipe: set `prompt` (one question, takes precedence) or `dataset` (accuracy)")
        check_not_a_mixture(cfg.get("dataset"), type(self).__name__)
        self.device = utils.get_device(cfg.get("device", "cpu"))
        self.dtype = training.get_dtype(cfg.get("dtype", "fp32"), device=self.device)
        # max_generated_tokens: generate()'s earlier keyword, accepted here too
        self.max_new_tokens = new_token_budget(
            cfg.get("max_new_tokens"), cfg.get("max_generated_tokens"), default=DEFAULT_MAX_NEW_TOKENS
        )
        self.batch_size = int(cfg.get("batch_size", 8))
        if self.batch_size < 1:
            raise ValueError(f"GenerateRecipe: batch_size must be >= 1, got {self.batch_size}")
        self.sampling = {
            "temperature": float(cfg.get("temperature", 0.0)),
            "top_k": cfg.get("top_k"),
            "top_p": cfg.get("top_p"),
        }

    def setup(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        seed = int(cfg.get("seed", 0))
        torch.manual_seed(seed)
        self.rng = torch.Generator(self.device).manual_seed(seed)
        self.transform = build(cfg, "tokenizer")
        self.model = build(cfg, "model").to(device=self.device, dtype=self.dtype).eval()
        check_transform_for_model(self.transform, self.model)
        self.collate_fn = collator_for_model(build(cfg, "collate_fn"), self.model)  # the model's video positions
        answer_prompt = cfg.get("prompt") is not None
        self.dataset = None if answer_prompt else build(cfg, "dataset", QuestionTransform(self.transform))

    def _answer(self, prompts: list[dict[str, Any]]) -> list[list[int]]:
        """Generated ids (without the stop token) for each prompt sample, `batch_size` prompts at a time."""
        answers: list[list[int]] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = move_to_device(self.collate_fn(prompts[start : start + self.batch_size]), self.device, self.dtype)
            out = generate(
                self.model, batch, max_new_tokens=self.max_new_tokens, stop_tokens=self.transform.stop_tokens,
                rng=self.rng, **self.sampling,
            )  # fmt: skip
            answers += out.answers()
        return answers

    def generate(self) -> dict[str, Any]:
        """Answer `prompt` if set, else every dataset sample (scoring exact token match); print the results."""
        if self.dataset is None:
            return self._answer_prompt()
        return self._score_dataset()

    def _answer_prompt(self) -> dict[str, Any]:
        """Answer `prompt` (a question, or a list of questions asked as one batch) about `images` and `videos`."""
        questions, prompts = self.prompt_samples()
        answers = [self.transform.decode(ids) for ids in self._answer(prompts)]
        for answer in answers:
            print(answer, flush=True)
        many = isinstance(self.cfg.prompt, (list, ListConfig))
        return {"prompt": questions, "answer": answers} if many else {"prompt": questions[0], "answer": answers[0]}

    def prompt_samples(self) -> tuple[list[str], list[dict[str, Any]]]:
        """(questions, their transformed prompts): each question after every file of `images`, then `videos`."""
        many = isinstance(self.cfg.prompt, (list, ListConfig))
        questions = [str(q) for q in self.cfg.prompt] if many else [str(self.cfg.prompt)]
        media = [{"type": kind, kind: str(path)} for kind in ("image", "video") for path in self.cfg.get(f"{kind}s") or []]
        conversations = [[{"role": "user", "content": [*media, {"type": "text", "text": q}]}] for q in questions]
        return questions, [self.transform({"messages": messages}, inference=True) for messages in conversations]

    def _score_dataset(self) -> dict[str, Any]:
        """Answer the first `max_samples` records; exact-match accuracy over those with a reference answer (a
        skipped record counts as a wrong answer; one without a reference is answered, not scored)."""
        limit = self.cfg.get("max_samples")
        count = len(self.dataset) if limit is None else min(int(limit), len(self.dataset))
        records, skipped = [], SkipCounts(max_workers=0)
        for start in range(0, count, self.batch_size):  # one batch of samples in memory at a time
            entries, samples = {}, []
            for index in range(start, min(start + self.batch_size, count)):
                outcome = sample_or_skip(self.dataset, index)
                if isinstance(outcome, SkippedRecord):
                    skipped.add(outcome)
                    entries[index] = {"id": outcome.example, "skipped": outcome.cause, "error": outcome.message,
                                      "correct": False}  # fmt: skip
                else:
                    samples.append((index, outcome))
            splits = [prompt_and_reference(sample) for _, sample in samples]
            prompts = [prompt_sample(sample, prompt) for (_, sample), (prompt, _) in zip(samples, splits)]
            for (index, sample), (_, reference), answer in zip(samples, splits, self._answer(prompts)):
                entries[index] = {
                    "id": sample.get("id", index), "answer": self.transform.decode(answer),
                    "reference": None if reference is None else self.transform.decode(reference),
                    "correct": None if reference is None else answer == reference,
                }  # fmt: skip
            records += [entries[index] for index in sorted(entries)]
        scored = [r for r in records if r["correct"] is not None]
        correct = sum(r["correct"] for r in scored)
        result = {
            "accuracy": correct / len(scored) if scored else 0.0, "correct": correct, "total": len(scored),
            "unscored": len(records) - len(scored), "skipped": skipped.total(),
            "skipped_by_cause": skipped.report().by_cause,
        }  # fmt: skip
        print(f"accuracy: {result['accuracy']:.1%} ({correct}/{len(scored)} exact answers)", flush=True)
        if result["unscored"]:
            print(f"{result['unscored']} of {len(records)} records have no reference answer: answered, not scored",
                  flush=True)  # fmt: skip
        if skipped.total():
            print(f"{skipped.total()} of these {len(scored)} records could not be asked and count as wrong "
                  f"answers ({skip_advice(self.cfg)}); {skipped.summary()}", flush=True)
        if self.cfg.get("output_dir"):
            out = Path(self.cfg.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            (out / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
            (out / "generate_metrics.json").write_text(json.dumps(result, indent=2))
            print(f"answers: {out / 'answers.jsonl'}", flush=True)
        return {**result, "records": records}

    def cleanup(self) -> None:
        """Nothing to release: no process group, no open files."""


def skip_advice(cfg: DictConfig) -> str:
    """What to set to see a skipped record's error, for the run's ``dataset.on_error``."""
    dataset = cfg.get("dataset")
    on_error = dataset.get("on_error", "raise") if isinstance(dataset, DictConfig) else "raise"
    if on_error == "skip":
        return "dataset.on_error=skip: the answers list each one's error; dataset.on_error=raise stops at the first"
    return f"dataset.on_error={on_error}, yet the dataset skipped them itself: the answers list each one's cause"


def run_generate(cfg: DictConfig) -> None:
    """setup -> generate -> cleanup; a bad config, a missing path or a prompt's unreadable image ends the process
    in one line (exit status 1), as the training recipes' refusals do."""
    with refusals_in_one_line(SampleError):
        recipe = GenerateRecipe(cfg)
        recipe.setup(cfg)
        recipe.generate()
        recipe.cleanup()


@config.parse
def recipe_main(cfg: DictConfig) -> None:
    run_generate(cfg)


if __name__ == "__main__":
    recipe_main()
