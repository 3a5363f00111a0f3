"""Config checks and component building with errors that name the offending config key."""

import difflib
import re
from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torchtune import config
from torchtune.config._errors import InstantiationError

_INTERPOLATION = re.compile(r"\$\{\s*([A-Za-z_][\w]*)")


def _interpolated_names(node: Any) -> set[str]:
    """Top-level names that ${...} interpolations anywhere in the config refer to."""
    if isinstance(node, dict):
        return set().union(*(_interpolated_names(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_interpolated_names(v) for v in node)) if node else set()
    if isinstance(node, str):
        return set(_INTERPOLATION.findall(node))
    return set()


def check_config_keys(cfg: DictConfig, recipe: str, required: Iterable[str], optional: Iterable[str]) -> None:
    """Reject unknown or missing top-level keys, naming them (and the nearest valid key for typos).

    A top-level key the recipe does not read is still accepted when another value interpolates
    it (`checkpoint_dir: ...` used as `${checkpoint_dir}`): that is how configs share one value.

    Raises:
        ValueError: listing every unknown key with a suggestion, or every missing required key.
    """
    required, optional = set(required), set(optional)
    known = required | optional
    raw = OmegaConf.to_container(cfg, resolve=False)
    referenced = _interpolated_names(raw)
    unknown = sorted(k for k in raw if k not in known and k not in referenced)
    problems = []
    for key in unknown:
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f" (did you mean `{close[0]}`?)" if close else ""
        problems.append(f"unknown key `{key}`{hint}")
    missing = sorted(required - set(raw))
    problems += [f"missing required key `{key}`" for key in missing]
    if problems:
        raise ValueError(
            f"{recipe}: bad config: " + "; ".join(problems) + f". Valid keys: {', '.join(sorted(known))}"
        )


def build(cfg: DictConfig, key: str, *args: Any, **kwargs: Any) -> Any:
    """config.instantiate(cfg[key], *args, **kwargs), with errors that say which config key failed."""
    return build_node(cfg.get(key), key, *args, **kwargs)


def build_node(node: Any, key: str, *args: Any, **kwargs: Any) -> Any:
    """config.instantiate(node, ...) for the config entry named ``key`` (e.g. ``dataset[1]``), errors naming it."""
    if not isinstance(node, DictConfig) or "_component_" not in node:
        raise ValueError(f"config key `{key}` must be a mapping with a `_component_` entry, got {node!r}")
    try:
        return config.instantiate(node, *args, **kwargs)
    except (TypeError, InstantiationError) as error:
        raise ValueError(f"config key `{key}` ({node._component_}): {error}") from error
