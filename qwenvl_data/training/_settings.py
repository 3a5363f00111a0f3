"""Every top-level key of a fine-tuning recipe's config, in one place: its type, default and rule.

``RecipeSettings`` is built once from the config (``RecipeSettings.from_config``) after the whole config was
checked (unknown keys with did-you-mean, missing ones, values, components); the recipe reads its settings from
that object only, so no key has two defaults. Component sections (``model``, ``dataset``, ...) are listed here
too (their keys are checked against their ``_component_``'s signature) and stay config nodes, built with
``config.instantiate`` where they are needed.
"""

from dataclasses import dataclass, field, fields
from typing import Any

from omegaconf import DictConfig
from torchtune.training.precision import PRECISION_STR_TO_DTYPE

from qwenvl_data.training._config import Rule, check_config_keys
from qwenvl_data.training._nonfinite import ON_NONFINITE

_COUNT = Rule((int,), minimum=1)
_OPTIONAL_COUNT = Rule((int,), nullable=True, minimum=1)
_FLAG = Rule((bool,))
_REQUIRED = object()


def _key(rule: Rule | None, default: Any = _REQUIRED, *, lora_only: bool = False) -> Any:
    """One config key: ``rule`` checks its value (None: a component section), ``default`` applies when absent."""
    required = default is _REQUIRED
    return field(default=None if required else default,
                 metadata={"rule": rule, "required": required, "lora_only": lora_only})  # fmt: skip


@dataclass(frozen=True)
class RecipeSettings:
    """The run's settings, typed, with the default each key has when the config does not set it."""

    # component sections: ``_component_`` mappings (``dataset`` may be a list: a weighted mixture)
    model: Any = _key(None)
    tokenizer: Any = _key(None)
    dataset: Any = _key(None)
    collate_fn: Any = _key(None)
    optimizer: Any = _key(None)
    loss: Any = _key(None)
    checkpointer: Any = _key(None)
    lr_scheduler: Any = _key(None, None)
    metric_logger: Any = _key(None, None)
    eval_dataset: Any = _key(None, None)
    # the run
    output_dir: str = _key(Rule((str,)))
    epochs: int = _key(_COUNT)
    batch_size: int = _key(_COUNT)
    seed: int = _key(Rule((int,), minimum=0), 0)
    shuffle: bool = _key(_FLAG, True)
    gradient_accumulation_steps: int = _key(_COUNT, 1)
    max_steps_per_epoch: int | None = _key(_OPTIONAL_COUNT, None)
    stop_after_step: int | None = _key(_OPTIONAL_COUNT, None)
    resume_from_checkpoint: bool | str = _key(Rule((bool, str)), False)
    device: str = _key(Rule((str,)), "cpu")
    dtype: str = _key(Rule((str,), choices=tuple(PRECISION_STR_TO_DTYPE)), "fp32")
    num_workers: int = _key(Rule((int,), minimum=0), 0)
    # the model
    init_std: float | None = _key(Rule((float,), nullable=True, minimum=0.0), None)
    # unset: a full fine-tune trains the tower; a LoRA run trains its adapters and the merger, not the tower
    # (a ``train_vision_tower`` the model section sets itself wins)
    freeze_vision_tower: bool | None = _key(_FLAG, None)
    freeze_merger: bool = _key(_FLAG, False)
    enable_activation_checkpointing: bool = _key(_FLAG, False)
    compile: bool = _key(_FLAG, False)
    fsdp_reshard_after_forward: bool = _key(_FLAG, True)
    # the steps
    clip_grad_norm: float | None = _key(Rule((float,), nullable=True, minimum=0.0), None)
    max_skip_fraction: float = _key(Rule((float,), minimum=0.0, maximum=1.0), 0.01)
    on_nonfinite_loss: str = _key(Rule((str,), choices=ON_NONFINITE), "stop")
    log_every_n_steps: int = _key(_COUNT, 1)
    # evaluation and saving (see training/_periodic.py)
    eval_batch_size: int = _key(_COUNT, 8)
    eval_max_samples: int | None = _key(_OPTIONAL_COUNT, None)
    eval_examples: int = _key(Rule((int,), minimum=0), 0)  # held-out questions answered on the console at the end
    eval_every_n_steps: int | None = _key(_OPTIONAL_COUNT, None)
    save_hf_every_n_steps: int | None = _key(_OPTIONAL_COUNT, None)
    keep_last_n_hf: int = _key(_COUNT, 1)
    # a cluster's failures (see training/_watchdog.py): a batch read that does not return ends the rank
    data_timeout_s: float | None = _key(Rule((float,), nullable=True, minimum=1.0), 300.0)
    collective_timeout_s: float = _key(Rule((float,), minimum=1.0), 600.0)
    # what a resume may differ in from the state it continues (see training/_fingerprint.py)
    resume_overrides: tuple | list = _key(Rule((list,)), ())
    save_merged_weights: bool = _key(_FLAG, True, lora_only=True)

    @classmethod
    def from_config(cls, cfg: DictConfig, recipe: str, *, lora: bool) -> "RecipeSettings":
        """Check the whole config (``check_config_keys``: every problem at once), then read each key once.

        Raises:
            ValueError: ``"<recipe>: bad config: <problem>; ..."``.
        """
        check_config_keys(cfg, recipe, REQUIRED_KEYS, OPTIONAL_KEYS + (LORA_KEYS if lora else ()), VALUE_RULES)
        values = {}
        for spec in fields(cls):
            if spec.name not in cfg or (spec.metadata["lora_only"] and not lora):
                continue
            value, rule = cfg.get(spec.name), spec.metadata["rule"]
            if rule is not None and float in rule.types and value is not None:
                value = float(value)  # ``clip_grad_norm: 1`` is 1.0
            values[spec.name] = value
        return cls(**values)


REQUIRED_KEYS = tuple(f.name for f in fields(RecipeSettings) if f.metadata["required"])
OPTIONAL_KEYS = tuple(
    f.name for f in fields(RecipeSettings) if not f.metadata["required"] and not f.metadata["lora_only"]
)
LORA_KEYS = tuple(f.name for f in fields(RecipeSettings) if f.metadata["lora_only"])
VALUE_RULES: dict[str, Rule] = {f.name: f.metadata["rule"] for f in fields(RecipeSettings) if f.metadata["rule"]}
