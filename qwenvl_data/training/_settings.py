"""What each top-level recipe config value may be, checked at start before anything is built."""

from torchtune.training.precision import PRECISION_STR_TO_DTYPE

from qwenvl_data.training._config import Rule
from qwenvl_data.training._nonfinite import ON_NONFINITE

_COUNT = Rule((int,), minimum=1)
_OPTIONAL_COUNT = Rule((int,), nullable=True, minimum=1)
_FLAG = Rule((bool,))

VALUE_RULES: dict[str, Rule] = {
    "output_dir": Rule((str,)),
    "seed": Rule((int,), minimum=0),
    "epochs": _COUNT,
    "batch_size": _COUNT,
    "gradient_accumulation_steps": _COUNT,
    "max_steps_per_epoch": _OPTIONAL_COUNT,
    "stop_after_step": _OPTIONAL_COUNT,
    "log_every_n_steps": _COUNT,
    "eval_batch_size": _COUNT,
    "eval_max_samples": _OPTIONAL_COUNT,
    "eval_examples": Rule((int,), minimum=0),
    "num_workers": Rule((int,), minimum=0),
    "resume_from_checkpoint": Rule((bool, str)),
    "device": Rule((str,)),
    "dtype": Rule((str,), choices=tuple(PRECISION_STR_TO_DTYPE)),
    "shuffle": _FLAG,
    "enable_activation_checkpointing": _FLAG,
    "compile": _FLAG,
    "freeze_vision_tower": _FLAG,
    "freeze_merger": _FLAG,
    "fsdp_reshard_after_forward": _FLAG,
    "save_merged_weights": _FLAG,
    "clip_grad_norm": Rule((float,), nullable=True, minimum=0.0),
    "init_std": Rule((float,), nullable=True, minimum=0.0),
    "max_skip_fraction": Rule((float,), minimum=0.0, maximum=1.0),
    "on_nonfinite_loss": Rule((str,), choices=ON_NONFINITE),
}
