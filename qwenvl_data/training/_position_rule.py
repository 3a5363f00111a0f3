"""One family per run: the collator's position rule and the transform's processing must be the model's family's.

The rule reaches the code from two places, the collator's YAML and the model (Qwen2.5-VL: 2 temporal ids per
second; Qwen2-VL: one id per temporal patch; Qwen3-VL: each temporal patch its own span). A collator that leaves it
out takes the model's family's (``family_of_model(model).position_rule``); one that sets another is refused, so a
run never trains on another family's video positions. The transform's ``family`` likewise (patch size, mean/std,
chat template, video rule) must process as the model's family does, checked before the first batch rather than when
the HF directory is written.
"""

import copy
from collections.abc import Callable
from typing import Any

from torch import nn

from qwenvl_data.models import family_of_model, model_family
from qwenvl_data.training._refusal import ConfigError


def collator_for_model(collate_fn: Callable[..., Any], model: nn.Module) -> Callable[..., Any]:
    """``collate_fn`` applying ``model``'s video position rule (``family_of_model(model).position_rule``).

    Args:
        collate_fn: ``Qwen2_5_VLCollator`` / ``Qwen2_5_VLPackedCollator`` (or a collate function of your own,
            returned unchanged: it owns its positions).
        model: the run's model, of any family ``family_of_model`` knows (a model of your own leaves ``collate_fn``
            unchanged).

    Returns:
        ``collate_fn`` itself when it already applies the model's rule, else a copy bound to it.

    Raises:
        ValueError: the collator sets a rule the model's family does not use, naming both.
    """
    if not hasattr(collate_fn, "position_rule_set"):
        return collate_fn  # a collate function of your own: no family rule to agree on
    try:
        family = family_of_model(model)
    except TypeError:
        return collate_fn  # a model of your own: no family rule to agree on
    if collate_fn.position_rule_set:
        if collate_fn.position_rule != family.position_rule:
            raise ValueError(
                f"collate_fn ({type(collate_fn).__name__}) sets {collate_fn.position_rule} but the model is "
                f"{family.architecture} (model_type {family.model_type}), whose video positions use "
                f"{family.position_rule}: leave collate_fn.tokens_per_second / position_rule out to take the "
                "model's rule"
            )
        return collate_fn
    bound = copy.copy(collate_fn)
    bound.position_rule, bound.position_rule_set = family.position_rule, True
    return bound


def check_transform_for_model(transform: Any, model: nn.Module) -> None:
    """Refuse a run whose transform tokenizes and preprocesses for another family than the model's.

    Args:
        transform: the run's ``tokenizer`` (a ``Qwen2_5_VLTransform``; one of your own without ``family`` passes).
        model: the run's model (a model of your own passes).

    Raises:
        ConfigError: (a ValueError) the transform's family processes otherwise than the model's (Qwen2.5-VL's 14-pixel patches for
            a Qwen3-VL model), naming both and the key to set.
    """
    transform_family = getattr(transform, "family", None)
    if transform_family is None:
        return
    try:
        family = family_of_model(model)
    except TypeError:
        return
    if not family.processes_like(model_family(transform_family, "the transform's family")):
        raise ConfigError(
            f"the model is {family.architecture} (model_type {family.model_type}) but the tokenizer transform is "
            f"{transform_family}'s: set tokenizer.family={family.model_type} (or use checkpoint_transform of the "
            "model's checkpoint)"
        )
