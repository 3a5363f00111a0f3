"""One video position rule per run: the collator's ``tokens_per_second`` and the model's family must agree.

The rule reaches the code from two places, the collator's YAML and the model (Qwen2.5-VL: 2 temporal ids per
second; Qwen2-VL: None, one id per temporal patch). A collator that leaves it out takes the model's; one that
sets another is refused, so a Qwen2-VL run never trains on Qwen2.5-VL's video positions.
"""

import copy
from collections.abc import Callable
from typing import Any

from torch import nn

from qwenvl_data.models import family_of_model


def collator_for_model(collate_fn: Callable[..., Any], model: nn.Module) -> Callable[..., Any]:
    """``collate_fn`` applying ``model``'s video position rule (``model.tokens_per_second``).

    Args:
        collate_fn: ``Qwen2_5_VLCollator`` / ``Qwen2_5_VLPackedCollator`` (or a collate function of your own,
            returned unchanged: it owns its positions).
        model: the run's model (a ``Qwen2_5_VLModel`` of either family; a model without ``tokens_per_second``
            leaves ``collate_fn`` unchanged).

    Returns:
        ``collate_fn`` itself when it already applies the model's rule, else a copy bound to it.

    Raises:
        ValueError: the collator sets a ``tokens_per_second`` the model's family does not use, naming both.
    """
    if not hasattr(collate_fn, "tokens_per_second_set") or not hasattr(model, "tokens_per_second"):
        return collate_fn  # a collate function or model of your own: no family rule to agree on
    rule = model.tokens_per_second
    if collate_fn.tokens_per_second_set:
        if collate_fn.tokens_per_second != rule:
            family = family_of_model(model)
            raise ValueError(
                f"collate_fn ({type(collate_fn).__name__}) sets tokens_per_second={collate_fn.tokens_per_second} but "
                f"the model is {family.architecture} (model_type {family.model_type}), whose video positions use "
                f"tokens_per_second={rule}: leave collate_fn.tokens_per_second out to take the model's rule"
            )
        return collate_fn
    bound = copy.copy(collate_fn)
    bound.tokens_per_second, bound.tokens_per_second_set = rule, True
    return bound
