"""Answer accuracy: does the model produce exactly the reference answer to held-out questions?"""

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from qwenvl_data._constants import IGNORE_INDEX, IM_END_ID
from qwenvl_data.training._data import move_to_device
from qwenvl_data.training._loss import project_trained_rows, trained_rows


@torch.no_grad()
def answer_accuracy(
    model: nn.Module,
    dataset: Dataset,
    collate_fn: Callable[[list[Any]], dict[str, torch.Tensor]],
    *,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
    max_samples: int | None = None,
) -> dict[str, float]:
    """Exact-match accuracy of greedy answers, computed in one teacher-forced pass per batch.

    Greedy decoding reproduces the reference answer (and its closing <|im_end|>) exactly when,
    at every answer position, the most likely next token given the reference prefix is the
    reference token; checking that on the teacher-forced logits gives the same verdict as
    generating, without a decoding loop. Every rank evaluates every sample (an FSDP2 forward
    needs all ranks), so the figure is the same on all ranks.

    Args:
        dataset: samples from the model transform (`tokens`, `labels` with -100 outside the answer).
        max_samples: evaluate only the first this many samples.

    Returns:
        {"accuracy": float in [0, 1], "correct": int, "total": int, "chance": float | None, "loss": float | None};
        ``chance`` is the mean of the samples' ``chance`` (accuracy of guessing, as synthetic samples carry it),
        None without it; ``loss`` is the cross-entropy per trained token (None when no token is trained).
    """
    was_training = model.training
    model.eval()
    count = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    correct = total = trained = 0
    loss_sum = 0.0
    chances = []
    for start in range(0, count, batch_size):
        samples = [s for s in (dataset[i] for i in range(start, min(start + batch_size, count))) if s is not None]
        if not samples:
            continue
        chances += [s["chance"] for s in samples if "chance" in s]
        batch = move_to_device(collate_fn(samples), device, dtype)
        rows, targets = trained_rows(batch["labels"])
        with project_trained_rows(model, rows):
            logits = model(**batch)
        predicted = logits.argmax(dim=-1)
        loss_sum += float(F.cross_entropy(logits.float(), targets, reduction="sum"))
        trained += targets.numel()
        # A sample is right when none of its answer positions is wrong (and it has an answer).
        sample_of_row = rows.nonzero()[:, 0]
        wrong = torch.zeros(len(samples), device=device).index_add_(0, sample_of_row, (predicted != targets).float())
        exact = (wrong == 0) & rows.any(dim=1)
        correct += int(exact.sum())
        total += len(samples)
    model.train(was_training)
    chance = sum(chances) / len(chances) if chances and len(chances) == total else None
    return {
        "accuracy": correct / total if total else 0.0, "correct": correct, "total": total, "chance": chance,
        "loss": loss_sum / trained if trained else None,
    }  # fmt: skip


def split_prompt_and_answer(sample: dict[str, Any]) -> tuple[list[int], list[int]]:
    """Split a transformed sample at its first trained token.

    Returns:
        (prompt tokens, ending with "<|im_start|>assistant\\n"; reference answer tokens without <|im_end|>)
    """
    labels = sample["labels"]
    trained = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    if not trained:
        raise ValueError(f"sample {sample.get('id')!r}: has no assistant turn to answer")
    start = trained[0]
    rest = list(sample["tokens"][start:])
    end = rest.index(IM_END_ID) if IM_END_ID in rest else len(rest)
    return list(sample["tokens"][:start]), rest[:end]


@torch.no_grad()
def greedy_answer(
    model: nn.Module,
    sample: dict[str, Any],
    prompt: list[int],
    collate_fn: Callable[[list[Any]], dict[str, torch.Tensor]],
    *,
    device: torch.device,
    dtype: torch.dtype,
    max_new_tokens: int,
    stop_token_ids: tuple[int, ...] = (IM_END_ID,),
) -> list[int]:
    """Greedy decoding of the assistant's answer after `prompt`.

    The whole sequence is re-run each step (no KV cache) and re-collated, so the MRoPE positions
    of new tokens come from the same rule as in training; fine for short answers.

    Args:
        sample: a transformed sample; its pixel keys are the prompt's images/videos.
        prompt: token ids ending with "<|im_start|>assistant\n" (see split_prompt_and_answer,
            or the transform's `inference=True`).

    Returns:
        the generated token ids, without the stop token.
    """
    tokens = list(prompt)
    for _ in range(max_new_tokens):
        step_sample = {**sample, "tokens": tokens, "labels": [IGNORE_INDEX] * len(tokens), "mask": [True] * len(tokens)}
        batch = move_to_device(collate_fn([step_sample]), device, dtype)
        next_token = int(model(**batch)[0, -1].argmax())
        if next_token in stop_token_ids:
            break
        tokens.append(next_token)
    return tokens[len(prompt) :]
