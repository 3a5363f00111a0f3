"""Recipe machinery: the shared fine-tuning loop, checkpoints, loss, evaluation, FSDP2 and reporting.

The recipes in recipes/ import from here (never from `recipes.*`, which torchtune's own wheel
occupies), so they run the same under `tune run`, `torchrun` and plain `python`.
"""

from qwenvl_data.training._checkpoint import TrainingCheckpointer
from qwenvl_data.training._components import (
    checkpoint_transform,
    packaged_vocab_transform,
    records_or_synthetic_dataset,
)
from qwenvl_data.training._eval import (
    QuestionTransform,
    answer_accuracy,
    greedy_answer,
    prompt_and_reference,
    prompt_sample,
    split_prompt_and_answer,
)
from qwenvl_data.training._loss import NextTokenCrossEntropy
from qwenvl_data.training._model_setup import init_weights
from qwenvl_data.training._position_rule import collator_for_model
from qwenvl_data.training._recipe import FinetuneRecipe, run_recipe

__all__ = [
    "FinetuneRecipe",
    "QuestionTransform",
    "NextTokenCrossEntropy",
    "TrainingCheckpointer",
    "answer_accuracy",
    "checkpoint_transform",
    "collator_for_model",
    "packaged_vocab_transform",
    "records_or_synthetic_dataset",
    "greedy_answer",
    "init_weights",
    "prompt_and_reference",
    "prompt_sample",
    "run_recipe",
    "split_prompt_and_answer",
]
