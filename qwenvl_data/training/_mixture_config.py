"""A ``dataset`` config that is a weighted mixture, in either spelling, as one list of ``MixtureEntry``.

- The YAML list: ``dataset`` is a list, each item a dataset config (``_component_`` ...) plus its ``weight``.
- The short form, for the command line: the config's one ``dataset`` section plus ``mixture`` (a list of data
  paths) and ``weights`` (one number per path)::

      tune run ... --config configs/<x>.yaml 'dataset.mixture=[/data/a.jsonl, /data/video.json, /data/saved]' \\
          'dataset.weights=[0.6, 0.3, 0.1]'

  Each path is read by the section's own ``_component_`` with its other keys (``format``, ``on_error``,
  ``image_dir``, ...), as if given alone: a directory as ``source=<path>`` (a saved ``datasets`` directory or a
  directory of data files), a file or glob pattern as ``data_files=<path>`` with ``source`` unset (the kind from
  the file: JSON Lines or a JSON array by content, ``.parquet``, ``.arrow``, ``.tar``). The section's
  ``source`` (a kind name such as the released configs' ``jsonl``) and ``data_files`` are what each path
  replaces: ``data_files``, or a directory ``source``, set beside ``mixture`` is an error, as it would say
  which data to read twice.

The recipes build the mixture (training/_data.py), ``inspect`` inspects each of its datasets, and both name a
dataset the same way: by its path in the short form, ``dataset[i]`` in the YAML list.
"""

import os
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from qwenvl_data.datasets._data_files import SOURCES
from qwenvl_data.training._config import accepts_keyword, build_node
from qwenvl_data.training._refusal import ConfigError

MIXTURE_KEYS = ("mixture", "weights")  # the short form's keys in a `dataset` section
_SHORT_FORM_EXAMPLE = "e.g. 'dataset.mixture=[/data/a.jsonl, /data/saved_dir]' 'dataset.weights=[0.7, 0.3]'"


@dataclass(frozen=True)
class MixtureEntry:
    """One dataset of a mixture.

    Args:
        name: how reports name it (its path in the short form, ``dataset[i]`` in the YAML list).
        key: the config key errors name (``dataset.mixture[1]``, ``dataset[1]``).
        config: its dataset config (a ``_component_`` mapping).
        weight: its relative sampling weight (> 0).
    """

    name: str
    key: str
    config: DictConfig
    weight: float

    def build(self, model_transform: Any) -> Any:
        """The dataset, built as the config says; an error building it names ``key`` and the path.

        Raises:
            ConfigError, MissingInputError: ``config key `<key>` (<name>): <cause>`` (``_config.build_node``).
        """
        return build_node(self.config, self.key, model_transform, what=self.name)


def mixture_entries(node: Any) -> list[MixtureEntry] | None:
    """The datasets of a ``dataset`` config that is a mixture (either spelling), None when it is one dataset.

    Raises:
        ConfigError: (a ValueError; a one-line refusal) naming the key and its value: a list item without a
            ``weight``, a short form whose ``mixture`` is not a list of paths, whose ``weights`` are missing, not
            positive numbers or not one per path, a path named twice, ``data_files`` (or a directory ``source``) set
            beside it, or a ``_component_`` that reads no data files (the generated synthetic questions).
    """
    if isinstance(node, ListConfig):
        return [_list_item(i, item) for i, item in enumerate(node)]
    if not isinstance(node, DictConfig) or not any(key in node for key in MIXTURE_KEYS):
        return None
    return _short_form(node)


def _list_item(index: int, item: Any) -> MixtureEntry:
    key = f"dataset[{index}]"
    spec = OmegaConf.to_container(item, resolve=True) if isinstance(item, DictConfig) else None
    if spec is None or "weight" not in spec:
        raise ConfigError(f"config key `{key}`: each dataset of a mixture needs a `weight`, got {item!r}")
    weight = spec.pop("weight")
    return MixtureEntry(key, key, OmegaConf.create(spec), _weight(f"{key}.weight", weight))


def _weight(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"`{key}` must be a number > 0 (a relative sampling weight), got {value!r}")
    return float(value)


def _short_form(node: DictConfig) -> list[MixtureEntry]:
    section = OmegaConf.to_container(node, resolve=True)
    paths, weights = section.pop("mixture", None), section.pop("weights", None)
    if paths is None:
        raise ConfigError(f"`dataset.weights={weights}` needs `dataset.mixture`, the data paths it weighs "
                         f"({_SHORT_FORM_EXAMPLE})")  # fmt: skip
    if not isinstance(paths, list) or not paths:
        raise ConfigError(f"`dataset.mixture` must be a list of data paths ({_SHORT_FORM_EXAMPLE}), got {paths!r}")
    for i, path in enumerate(paths):
        if not isinstance(path, str) or not path:
            raise ConfigError(f"`dataset.mixture[{i}]` must be a data path (a file, glob pattern or directory), "
                             f"got {path!r}")  # fmt: skip
    repeated = sorted({path for path in paths if paths.count(path) > 1})
    if repeated:
        raise ConfigError(f"`dataset.mixture` names {repeated} more than once (weigh a dataset with its weight)")
    if not isinstance(weights, list) or len(weights) != len(paths):
        given = "is not set" if weights is None else f"is {weights!r}"
        raise ConfigError(f"`dataset.weights` {given}: it takes one weight per path of `dataset.mixture` "
                         f"({len(paths)}: {paths}), {_SHORT_FORM_EXAMPLE}")  # fmt: skip
    weights = [_weight(f"dataset.weights[{i}]", w) for i, w in enumerate(weights)]
    _check_section(section)
    return [
        MixtureEntry(path, f"dataset.mixture[{i}]", OmegaConf.create({**section, **_data_keys(path)}), weight)
        for i, (path, weight) in enumerate(zip(paths, weights))
    ]


def _check_section(section: dict[str, Any]) -> None:
    """The ``dataset`` section's keys that would name the data a second time, or a component that reads none."""
    component = section.get("_component_")
    if not isinstance(component, str) or not accepts_keyword(component, "data_files"):
        raise ConfigError(
            f"`dataset.mixture` reads data files, but `dataset._component_={component}` takes no `data_files` "
            "(name qwenvl_data.datasets.multimodal_chat_dataset or streaming_chat_dataset, e.g. with "
            "configs/tiny_streaming.yaml)"
        )
    if section.get("data_files") is not None:
        raise ConfigError(f"`dataset.mixture` names the data, and `dataset.data_files={section['data_files']}` "
                         "too: set one of them")  # fmt: skip
    source = section.get("source")
    if source is not None and source not in SOURCES:
        raise ConfigError(f"`dataset.mixture` names the data, and `dataset.source={source}` too: set one of them "
                         f"(a directory goes into the mixture's list)")  # fmt: skip


def _data_keys(path: str) -> dict[str, Any]:
    """How the section's component reads ``path`` alone: a directory as its ``source``, else as ``data_files``."""
    if os.path.isdir(path):
        return {"source": path, "data_files": None}
    return {"source": None, "data_files": path}


def check_not_a_mixture(node: Any, recipe: str) -> None:
    """Refuse a mixture where one dataset is read once in order (generation, scoring).

    Raises:
        ConfigError: naming the keys.
    """
    if isinstance(node, ListConfig) or (isinstance(node, DictConfig) and any(k in node for k in MIXTURE_KEYS)):
        raise ConfigError(f"{recipe} reads one dataset in order; a mixture (`dataset.mixture` / a list under "
                         "`dataset`) is for training: give each dataset its own run (dataset.data_files=...)")

