"""Answer accuracy: does the model produce exactly the reference answer to held-out questions?"""

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from qwenvl_data._constants import IGNORE_INDEX, IM_END_ID, IM_START_ID
from qwenvl_data.generation import generate
from qwenvl_data.models import family_of_model
from qwenvl_data.training._data import move_to_device
from qwenvl_data.training._loss import project_trained_rows, trained_rows
from qwenvl_data.training._position_rule import collator_for_model


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
        collate_fn: batches them; a collator that leaves its position rule out takes the model's
            (``collator_for_model``), one that sets another is refused.
        max_samples: evaluate only the first this many samples.

    Returns:
        {"accuracy": float in [0, 1], "correct": int, "total": int, "chance": float | None, "loss": float | None};
        ``chance`` is the mean of the samples' ``chance`` (accuracy of guessing, as synthetic samples carry it),
        None without it; ``loss`` is the cross-entropy per trained token (None when no token is trained).
    """
    collate_fn = collator_for_model(collate_fn, model)  # the model's video position rule
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


def accuracy_line(result: dict[str, Any], when: str) -> str:
    """The console line of an ``answer_accuracy`` result, e.g. "held-out answer accuracy after training: 93.4%
    (239/256, chance 25.5%), loss 0.1234" (chance and loss where known)."""
    chance = "" if result["chance"] is None else f", chance {result['chance']:.1%}"
    loss = "" if result["loss"] is None else f", loss {result['loss']:.4f}"
    return (f"held-out answer accuracy {when}: {result['accuracy']:.1%} "
            f"({result['correct']}/{result['total']}{chance}){loss}")  # fmt: skip


def split_prompt_and_answer(sample: dict[str, Any]) -> tuple[list[int], list[int]]:
    """Split a transformed sample before its last answer (the final run of trained labels).

    Earlier turns, answers included, stay in the prompt as context.

    Returns:
        (prompt tokens, ending with "<|im_start|>assistant\\n"; reference answer tokens without <|im_end|>)

    Raises:
        ValueError: the sample has no trained answer, or nothing untrained before it (``train_on_input``).
    """
    labels = sample["labels"]
    start = max((i for i, label in enumerate(labels) if label != IGNORE_INDEX), default=None)
    if start is None:
        raise ValueError(f"sample {sample.get('id')!r}: has no assistant turn to answer")
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    if start == 0:
        raise ValueError(f"sample {sample.get('id')!r}: every token is trained (train_on_input?), no prompt to answer")
    rest = list(sample["tokens"][start:])
    end = rest.index(IM_END_ID) if IM_END_ID in rest else len(rest)
    return list(sample["tokens"][:start]), rest[:end]


class QuestionTransform:
    """Model transform of a dataset to answer (generate's): a record ending with its reference answer -> the
    labeled sample (``split_prompt_and_answer`` finds the reference); a record without one (a question with no
    answer, a conversation ending with a user turn) -> its prompt, ``transform(sample, inference=True)`` without
    labels, which is answered and left out of the accuracy.

    Args:
        transform: ``Qwen2_5_VLTransform`` (or any transform taking ``inference=True``).
    """

    def __init__(self, transform: Callable[..., dict[str, Any]]) -> None:
        self.transform = transform

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        final = sample["messages"][-1] if sample.get("messages") else None
        role = final.get("role") if isinstance(final, dict) else getattr(final, "role", None)
        if role == "assistant":
            return self.transform(sample)
        prompt = self.transform(sample, inference=True)
        return {key: value for key, value in prompt.items() if key not in ("labels", "mask")}

    def __getattr__(self, name: str) -> Any:  # decode, stop_tokens, max_seq_len: the wrapped transform's
        if name == "transform":
            raise AttributeError(name)
        return getattr(self.transform, name)


def prompt_and_reference(sample: dict[str, Any]) -> tuple[list[int], list[int] | None]:
    """(prompt tokens, reference answer tokens) of a ``QuestionTransform`` sample; None: no reference (a prompt
    sample, without labels, whose tokens are the prompt)."""
    if "labels" not in sample:
        return list(sample["tokens"]), None
    return split_prompt_and_answer(sample)


def prompt_sample(sample: dict[str, Any], prompt: list[int]) -> dict[str, Any]:
    """``sample`` as a generation prompt: ``prompt`` as its tokens, no labels (its media unchanged)."""
    return {**{k: v for k, v in sample.items() if k not in ("labels", "mask")}, "tokens": list(prompt)}


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
    """Greedy decoding of the assistant's answer after `prompt` (KV-cached, see ``qwenvl_data.generation``).

    Args:
        sample: a transformed sample; its pixel keys are the prompt's images/videos.
        prompt: token ids ending with "<|im_start|>assistant\\n" (see split_prompt_and_answer,
            or the transform's `inference=True`).

    Returns:
        the generated token ids, without the stop token.
    """
    batch = move_to_device(collator_for_model(collate_fn, model)([prompt_sample(sample, prompt)]), device, dtype)
    return generate(model, batch, max_new_tokens=max_new_tokens, stop_tokens=stop_token_ids).answers()[0]


def answer_examples(
    model: nn.Module,
    dataset: Dataset,
    collate_fn: Callable[[list[Any]], dict[str, torch.Tensor]],
    decode: Callable[..., str],
    *,
    count: int,
    device: torch.device,
    dtype: torch.dtype,
    max_new_tokens: int = 16,
) -> list[dict[str, Any]]:
    """What the model answers to the first ``count`` held-out questions, generated (greedy, KV-cached), for people.

    Args:
        dataset: transformed samples; a ``description`` field (synthetic data has one) says what the picture
            shows, otherwise the picture is named by its size.
        decode: the transform's ``decode(token_ids, skip_special_tokens=False) -> str``.
        max_new_tokens: the longest answer generated.

    Returns:
        one dict per example: ``id``, ``picture`` (words), ``question``, ``answer`` (generated), ``truth``,
        ``correct`` (the generated answer is the reference answer exactly).
    """
    was_training = model.training
    model.eval()
    patch_size = family_of_model(model).patch_size
    examples = []
    for index in range(min(count, len(dataset))):
        sample = dataset[index]
        if sample is None:  # a record the dataset skips
            continue
        prompt, reference = split_prompt_and_answer(sample)
        answer = greedy_answer(model, sample, prompt, collate_fn, device=device, dtype=dtype,
                               max_new_tokens=max_new_tokens)  # fmt: skip
        examples.append({
            "id": sample.get("id", index), "picture": sample.get("description") or _picture_sizes(sample, patch_size),
            "question": _last_user_text(prompt, decode), "answer": decode(answer), "truth": decode(reference),
            "correct": answer == reference,
        })  # fmt: skip
    model.train(was_training)
    return examples


def example_lines(examples: list[dict[str, Any]]) -> list[str]:
    """Console lines of ``answer_examples``: picture in words, question, generated answer, truth."""
    lines = [f"answers to {len(examples)} held-out questions (generated):"] if examples else []
    for example in examples:
        verdict = "right" if example["correct"] else f"wrong, truth: {example['truth']!r}"
        lines.append(f"  [{example['picture']}] {example['question']} -> {example['answer']!r} ({verdict})")
    return lines


def _last_user_text(prompt: list[int], decode: Callable[..., str]) -> str:
    """The text of the prompt's last user turn (special tokens such as image pads left out)."""
    starts = [i for i, token in enumerate(prompt) if token == IM_START_ID]
    turn = prompt[starts[-2] + 1 : starts[-1]] if len(starts) >= 2 else prompt
    role_and_text = decode(turn, skip_special_tokens=True).strip()
    return role_and_text.split("\n", 1)[-1].strip()


def _picture_sizes(sample: dict[str, Any], patch_size: int) -> str:
    """E.g. "image 84x56 px" (as the model sees it, from ``image_grid_thw`` and the family's ``patch_size``),
    or "no image"."""
    grids = sample.get("image_grid_thw")
    if grids is None or len(grids) == 0:
        return "no image"
    return ", ".join(f"image {w * patch_size}x{h * patch_size} px" for _, h, w in grids.tolist())
