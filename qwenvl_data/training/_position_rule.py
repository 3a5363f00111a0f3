"""One video position rule per run: the collator's rule and the model's family must agree.

The rule reaches the code from two places, the collator's YAML and the model (Qwen2.5-VL: 2 temporal ids per
second; Qwen2-VL: one id per temporal patch; Qwen3-VL: each temporal patch its own span). A collator that leaves it
out takes the model's family's (``family_of_model(model).position_rule``); one that sets another is refused, so a
run never trains on another family's video positions.
"""

import copy
from collections.abc import Callable
from typing import Any

from torch import nn

from qwenvl_data.models import family_of_model


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
