"""Config checks and component building with errors that name the offending config key."""

import difflib
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torchtune import config
from torchtune.config._errors import InstantiationError
from torchtune.config._utils import _get_component_from_path

from qwenvl_data.errors import SampleError
from qwenvl_data.training._refusal import ConfigError, MissingInputError, RunRefused

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


def check_config_keys(
    cfg: DictConfig,
    recipe: str,
    required: Iterable[str],
    optional: Iterable[str],
    rules: "Mapping[str, Rule] | None" = None,
) -> None:
    """Check a whole config at start, before anything is built, and report every problem at once.

    - top-level keys: unknown ones (with the nearest valid key for typos) and missing required ones. A key
      the recipe does not read is still accepted when another value interpolates it (`checkpoint_dir: ...`
      used as `${checkpoint_dir}`): that is how configs share one value;
    - top-level values with a ``rules`` entry: type, null, range, choices;
    - every ``_component_``'s keys against its signature (``component_problems``);
    - ``device``: it must exist on this machine.

    Raises:
        ConfigError: (a ValueError) ``"<recipe>: bad config: <problem>; <problem>..."``.
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
    problems += value_problems(cfg, rules or {})
    problems += component_problems(cfg)
    if isinstance(cfg.get("device"), str):
        problems += device_problems(cfg.device)
    if problems:
        valid = f". Valid keys: {', '.join(sorted(known))}" if unknown else ""
        raise ConfigError(f"{recipe}: bad config: " + "; ".join(problems) + valid)


def build(cfg: DictConfig, key: str, *args: Any, **kwargs: Any) -> Any:
    """config.instantiate(cfg[key], *args, **kwargs), with errors that say which config key failed."""
    return build_node(cfg.get(key), key, *args, **kwargs)


def build_node(node: Any, key: str, *args: Any, what: str | None = None, **kwargs: Any) -> Any:
    """config.instantiate(node, ...) for the config entry named ``key`` (e.g. ``dataset[1]``), errors naming it.

    A builder refusing its arguments (a TypeError, or a ValueError such as ``on_error='skipp'``) is a config error,
    and a file it cannot find a missing input: one-line refusals (``_refusal``) naming ``key`` and ``what`` (default
    the component). A bad record (``SampleError``, raised by a builder that reads records) stays what it is.

    Raises:
        ConfigError: the node is not a component, or its builder refused its arguments.
        MissingInputError: a file or directory the builder was given does not exist.
    """
    if not isinstance(node, DictConfig) or "_component_" not in node:
        raise ConfigError(f"config key `{key}` must be a mapping with a `_component_` entry, got {node!r}")
    where = f"config key `{key}` ({what or node._component_})"
    try:
        return config.instantiate(node, *args, **kwargs)
    except (RunRefused, SampleError):
        raise
    except FileNotFoundError as error:
        raise MissingInputError(f"{where}: {error}") from error
    except (TypeError, ValueError, InstantiationError) as error:
        raise ConfigError(f"{where}: {error}") from error


@dataclass(frozen=True)
class Rule:
    """What one config value may be: its type(s), whether null is allowed, and a range or choice check.

    ``int`` never accepts a bool or a float (``batch_size=2.7`` is refused, not truncated); ``float`` accepts ints.
    """

    types: tuple[type, ...]
    nullable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None

    def problem(self, value: Any) -> str | None:
        if value is None:
            return None if self.nullable else "must not be null"
        if not _has_type(value, self.types):
            names = " or ".join(t.__name__ for t in self.types) + (" or null" if self.nullable else "")
            return f"must be {names}, got {type(value).__name__} {value!r}"
        if self.choices is not None and value not in self.choices:
            return f"must be one of {list(self.choices)}, got {value!r}"
        if self.minimum is not None and isinstance(value, (int, float)) and value < self.minimum:
            return f"must be >= {self.minimum}, got {value!r}"
        if self.maximum is not None and isinstance(value, (int, float)) and value > self.maximum:
            return f"must be <= {self.maximum}, got {value!r}"
        return None


def _has_type(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def value_problems(cfg: DictConfig, rules: Mapping[str, Rule]) -> list[str]:
    """Every top-level value that breaks its rule (type, null, range, choices), with its key."""
    problems = []
    for key, rule in rules.items():
        if key not in cfg:
            continue
        try:
            value = cfg[key]  # resolves ${...} interpolations
        except Exception as error:  # an interpolation that does not resolve, a missing mandatory value
            problems.append(f"`{key}`: {error}")
            continue
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True)
        if (problem := rule.problem(value)) is not None:
            problems.append(f"`{key}` {problem}")
    return problems


def _component_nodes(node: Any, path: str = "") -> Iterable[tuple[str, DictConfig]]:
    """Every mapping with a ``_component_`` in the config, with its dotted key."""
    if isinstance(node, DictConfig):
        if "_component_" in node:
            yield path, node
        for key in node:
            yield from _component_nodes(node._get_node(key), f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            yield from _component_nodes(item, f"{path}[{i}]")


def _signature_parameters(component: Callable) -> Mapping[str, inspect.Parameter]:
    """The parameters of a component's signature (a class's ``__init__``'s).

    Raises:
        TypeError, ValueError: a builtin without an inspectable signature.
    """
    target = component.__init__ if inspect.isclass(component) else component
    return inspect.signature(target).parameters


def _parameters(params: Mapping[str, inspect.Parameter]) -> tuple[set[str], bool]:
    """The keyword names a signature accepts, and whether it takes ``**kwargs`` besides."""
    names = {p.name for p in params.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
    return names, any(p.kind is p.VAR_KEYWORD for p in params.values())


# Keys the recipe takes off a `dataset` entry before building it: a mixture item's weight, the command line's
# mixture (training/_mixture_config.py), the packing switch.
RECIPE_DATASET_KEYS = frozenset({"weight", "mixture", "weights", "packed", "packed_buffer_size"})


def _recipe_keys(path: str) -> frozenset[str]:
    """The recipe's own keys a dataset config at ``path`` may hold: ``weight`` in an item of the YAML mixture list
    (``dataset[1]``), the short form's ``mixture`` / ``weights`` in the one ``dataset`` section."""
    if not path.startswith("dataset"):
        return frozenset()
    return RECIPE_DATASET_KEYS - ({"mixture", "weights"} if path.startswith("dataset[") else {"weight"})


def accepts_keyword(component_path: str, name: str) -> bool:
    """Whether the callable at ``component_path`` takes the keyword ``name`` (by name or through ``**kwargs``)."""
    names, takes_kwargs = _parameters(_signature_parameters(_get_component_from_path(component_path)))
    return takes_kwargs or name in names


def component_problems(cfg: DictConfig) -> list[str]:
    """Each ``_component_``'s keys checked against its signature, before anything is built.

    A key the component does not take is refused with the nearest parameter name, as top-level typos are.
    A component that forwards ``**kwargs`` (e.g. to ``datasets.load_dataset``) cannot refuse unknown keys,
    but a near miss of one of its own parameters (``data_file`` for ``data_files``) is still a typo.

    Returns:
        a problem naming every bad key (``dataset.data_file``) with a suggestion, and every component
        that cannot be imported.
    """
    problems = []
    for path, node in _component_nodes(cfg):
        if not isinstance(node._component_, str):
            problems.append(f"`{path}._component_` must name a callable, got {node._component_!r}")
            continue
        try:
            component = _get_component_from_path(node._component_)
        except Exception as error:
            problems.append(f"`{path}._component_`: cannot import {node._component_!r} ({error})")
            continue
        try:
            params = _signature_parameters(component)
        except (TypeError, ValueError):  # a builtin without an inspectable signature
            continue
        names, takes_kwargs = _parameters(params)
        recipe_keys = _recipe_keys(path)
        for key in node:
            if key == "_component_" or key in names or key in recipe_keys:
                continue
            candidates = sorted({*names, *recipe_keys})
            close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.8 if takes_kwargs else 0.6)
            if takes_kwargs and not close:
                continue
            hint = f" (did you mean `{path}.{close[0]}`?)" if close else ""
            problems.append(f"unknown key `{path}.{key}` for {node._component_}{hint}")
        problems += _numbers_given_as_text(params, node, path)
    return problems


def _numbers_given_as_text(params: Mapping[str, inspect.Parameter], node: DictConfig, path: str) -> list[str]:
    """Keys given as text where the component takes a number (``optimizer.lr=abc``), named before building.

    A parameter takes a number when it is annotated ``int`` or ``float`` (``int | None`` too), or, unannotated
    or annotated with no ``str``, defaults to an int or float (not a bool). The builder itself would fail later
    with a message about its internals (AdamW: "'<=' not supported between instances of 'float' and 'str'").
    """
    problems = []
    for key, param in params.items():
        if key not in node or not _takes_a_number(param):
            continue
        try:
            value = node[key]  # resolves ${...}
        except Exception:  # an interpolation that does not resolve: building reports it
            continue
        if isinstance(value, str):
            default = "" if param.default is param.empty else f"; {node._component_}'s default: {param.default}"
            quoted = "; write it without quotes" if _is_number(value) else ""
            problems.append(f"`{path}.{key}` must be a number, got the text {value!r}{default}{quoted}")
    return problems


def _takes_a_number(param: inspect.Parameter) -> bool:
    annotation = param.annotation
    union = isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
    members = set(typing.get_args(annotation)) - {type(None)} if union else {annotation}  # ``int | None``: int
    if members and members <= {int, float, "int", "float"}:
        return True
    number_default = isinstance(param.default, (int, float)) and not isinstance(param.default, bool)
    return number_default and "str" not in str(annotation)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def device_problems(name: str) -> list[str]:
    """Why the requested device cannot be used here (never a silent fall-back to CPU); empty when it can."""
    try:
        device = torch.device(name)
    except RuntimeError as error:
        return [f"`device={name}`: {error}"]
    if device.type == "cpu":
        return []
    backend = getattr(torch, device.type, None)
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        return [f"`device={name}` but this machine has no {device.type} device (use device=cpu)"]
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if device.index is not None and device.index >= count:
        return [f"`device={name}` but this machine has {count} {device.type} device(s)"]
    return []
