"""Bad values of the data settings end a run with one line (a ``RunRefused`` printed by ``run_recipe``, no
traceback) naming the key and the value: the mixture short form, a typo'd key beside it, a missing data path, bad
``dataset.on_error`` / ``dataset.format`` values, a typo'd tokenizer key, and a resume with no saved state."""

import pytest
from support.datasets_records import write_jsonl
from support.recipes_support import recipe_class, refusal_line

from torchtune.config._parse import TuneRecipeArgumentParser
from torchtune.config._utils import _merge_yaml_and_cli_args

from qwenvl_data.training._recipe import run_recipe

REFUSALS = {
    "one_weight_for_two_paths": (["dataset.mixture=[{a}, {b}]", "dataset.weights=[0.7]"],
                                 "ConfigError: `dataset.weights` is [0.7]: it takes one weight per path"),
    "weight_typo": (["dataset.mixture=[{a}, {b}]", "dataset.weight=[1, 1]"],
                    "unknown key `dataset.weight` for qwenvl_data.datasets.streaming_chat_dataset (did you mean "
                    "`dataset.weights`?)"),
    "missing_path": (["dataset.mixture=[{a}, {gone}]", "dataset.weights=[1, 1]"],
                     "MissingInputError: config key `dataset.mixture[1]` ({gone}): "),
    "on_error": (["dataset.data_files={a}", "dataset.on_error=skipp"],
                 "ConfigError: config key `dataset` (qwenvl_data.datasets.streaming_chat_dataset): on_error must be "
                 "one of ('raise', 'skip'), got 'skipp'"),
    "format": (["dataset.data_files={a}", "dataset.format=alpacca"],
               "ConfigError: config key `dataset` (qwenvl_data.datasets.streaming_chat_dataset): format must be one "
               "of"),
    "tokenizer_key_typo": (["dataset.data_files={a}", "tokenizer.max_seq_length=512"],
                           "unknown key `tokenizer.max_seq_length` for qwenvl_data.training.packaged_vocab_transform "
                           "(did you mean `tokenizer.max_seq_len`?)"),
    "resume_without_state": (["dataset.data_files={a}", "resume_from_checkpoint=true"],
                             "MissingInputError: resume_from_checkpoint=true but {out}/training_state holds no "
                             "complete training state"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_a_bad_data_setting_ends_the_run_in_one_line_naming_it(tmp_path, capsys, name):
    overrides, expected = REFUSALS[name]
    names = {"a": write_jsonl(tmp_path / "a.jsonl", [{"id": "a", "question": "Q?", "answer": "A."}]),
             "b": write_jsonl(tmp_path / "b.jsonl", [{"id": "b", "question": "Q?", "answer": "A."}]),
             "gone": tmp_path / "gone.jsonl", "out": tmp_path / "out"}  # fmt: skip
    overrides = [o.format(**names) for o in overrides] + [f"output_dir={names['out']}", "max_steps_per_epoch=1"]
    # What `tune run ... --config configs/tiny_streaming.yaml <overrides>` hands recipe_main (torchtune's config.parse)
    args = TuneRecipeArgumentParser(description="").parse_known_args(["--config", "configs/tiny_streaming.yaml",
                                                                      *overrides])  # fmt: skip
    cfg = _merge_yaml_and_cli_args(*args)
    last_line = refusal_line(capsys, lambda: run_recipe(recipe_class("full_finetune_single_device"), cfg))
    assert expected.format(**names) in last_line
