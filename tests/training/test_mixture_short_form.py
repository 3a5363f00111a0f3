"""The command line's mixture (`dataset.mixture` + `dataset.weights`): a bad spelling is an error naming the key
and the value; a map-style mixture's records read and skipped are counted per dataset by the run's one ledger,
collator refusals included, and the counts survive a saved state."""

import re

import pytest
from support.datasets_records import write_jsonl
from support.recipes_support import load_config, recipe_class

from qwenvl_data.collate import Qwen2_5_VLCollator
from qwenvl_data.datasets._stats import MIXTURE_SOURCE_KEY, SkippedRecord
from qwenvl_data.inspect import load_config as load_cli_config
from qwenvl_data.training import packaged_vocab_transform
from qwenvl_data.training._data import RefillingBatches, build_dataset
from qwenvl_data.training._mixture_config import mixture_entries
from qwenvl_data.training._refusal import ConfigError, MissingInputError
from qwenvl_data.training._skips import SkipLedger, TooManySkipsError


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["dataset.mixture=a.jsonl,b.jsonl", "dataset.weights=[1, 1]"],
         r"`dataset.mixture` must be a list of data paths .*got 'a.jsonl,b.jsonl'"),
        (["dataset.mixture=[a.jsonl, 3]", "dataset.weights=[1, 1]"],
         r"`dataset.mixture\[1\]` must be a data path.*got 3"),
        (["dataset.mixture=[a.jsonl, b.jsonl]"], r"`dataset.weights` is not set: it takes one weight per path"),
        (["dataset.mixture=[a.jsonl, b.jsonl]", "dataset.weights=[1]"], r"`dataset.weights` is \[1\]: it takes one"),
        (["dataset.mixture=[a.jsonl, b.jsonl]", "dataset.weights=[1, 0]"],
         r"`dataset.weights\[1\]` must be a number > 0.*got 0"),
        (["dataset.mixture=[a.jsonl, b.jsonl]", "dataset.weights=[1, x]"],
         r"`dataset.weights\[1\]` must be a number.*got 'x'"),
        (["dataset.weights=[1, 2]"], r"`dataset.weights=\[1, 2\]` needs `dataset.mixture`"),
        (["dataset.mixture=[a.jsonl, a.jsonl]", "dataset.weights=[1, 2]"], r"names \['a.jsonl'\] more than once"),
        (["dataset.mixture=[a.jsonl, b.jsonl]", "dataset.weights=[1, 2]", "dataset.data_files=c.jsonl"],
         r"`dataset.data_files=c.jsonl` too: set one of them"),
    ],
    ids=["not_a_list", "not_a_path", "no_weights", "one_weight_short", "zero_weight", "text_weight",
         "weights_alone", "path_twice", "data_files_too"],
)  # fmt: skip
def test_a_bad_short_form_is_an_error_naming_the_key_and_the_value(overrides, message):
    cfg = load_cli_config("configs/tiny_streaming.yaml", overrides)  # tune run's own command-line rules
    with pytest.raises(ConfigError, match=message):  # a one-line refusal in tune run
        mixture_entries(cfg.dataset)


def test_a_path_that_cannot_be_read_is_named_with_its_key(tmp_path):
    present = write_jsonl(tmp_path / "a.jsonl", [{"id": "a", "question": "Q?", "answer": "A."}])
    cfg = load_cli_config("configs/tiny_streaming.yaml", [f"dataset.mixture=[{present}, {tmp_path / 'gone.jsonl'}]",
                                                          "dataset.weights=[1, 1]"])  # fmt: skip
    with pytest.raises(MissingInputError, match=rf"config key `dataset.mixture\[1\]` \({tmp_path / 'gone.jsonl'}\): "
                                                r"data file .* does not exist"):  # fmt: skip
        build_dataset(cfg, None, seed=0)


def test_a_config_that_reads_no_files_or_reads_in_order_refuses_a_mixture():
    overrides = ["dataset.mixture=[a.jsonl, b.jsonl]", "dataset.weights=[1, 1]"]
    with pytest.raises(ValueError, match=r"`dataset._component_=qwenvl_data.datasets.synthetic_vqa_dataset` takes no "
                                         "`data_files`"):  # fmt: skip
        mixture_entries(load_cli_config("configs/tiny_synthetic.yaml", overrides).dataset)
    cfg = load_cli_config("configs/generate.yaml", [*overrides, "checkpoint_dir=/models/tiny"])
    with pytest.raises(ValueError, match=r"GenerateRecipe reads one dataset in order; a mixture \(`dataset.mixture`"):
        recipe_class("generate")(cfg)


def _question(record_id: str, words: int = 1) -> dict:
    return {"id": record_id, "messages": [{"role": "user", "content": "Why? " * words},
                                          {"role": "assistant", "content": "Because."}]}  # fmt: skip


def test_a_map_style_mixture_counts_each_datasets_reads_and_skips_and_the_state_keeps_them(tmp_path):
    """x.jsonl: 3 good records and a broken line (skipped by the dataset); y.jsonl: 2 good records and one too long
    for the collator (refused after it was read). Over 8 batches each dataset's usable records read equal the
    samples of it that reached a batch, each skip is counted under its own dataset, and the counts add up."""
    x = write_jsonl(tmp_path / "x.jsonl", [_question(f"x{i}") for i in range(3)] + ['{"id": "broken", '])
    y = write_jsonl(tmp_path / "y.jsonl", [_question("y0"), _question("y_long", words=40), _question("y1")])
    cfg = load_config("qwen2_5_vl_3b_lora_single_device", {"dataset.mixture": [str(x), str(y)],
                                                            "dataset.weights": [1, 1]})  # fmt: skip
    dataset = build_dataset(cfg, packaged_vocab_transform(max_seq_len=256), seed=0)
    collator = Qwen2_5_VLCollator(max_seq_len=64)

    def drawn(samples: list[dict]) -> list[tuple[str, str]]:
        collator(samples)  # refuses y_long (SampleError): RefillingBatches counts and replaces it
        return [(sample[MIXTURE_SOURCE_KEY], sample["id"]) for sample in samples]

    ledger = SkipLedger(max_skip_fraction=1.0)
    ledger.expect_sources(dataset.names)
    batches = RefillingBatches(dataset, drawn, 2, ledger, shuffle=True, seed=0)
    batches.start_epoch(0)
    used = [pair for _ in range(8) for pair in batches.next_batch()]
    assert {record_id[0] for source, record_id in used if source == str(x)} == {"x"}
    assert {record_id for source, record_id in used if source == str(y)} <= {"y0", "y1"}
    report = ledger.report("run")
    x_counts, y_counts = report.by_source[str(x)], report.by_source[str(y)]
    for path, counts in ((x, x_counts), (y, y_counts)):
        assert counts.read - counts.skipped == sum(source == str(path) for source, _ in used) > 0
    assert set(x_counts.by_cause) == {"bad_conversation"} and x_counts.by_cause["bad_conversation"]["examples"] == [
        f"{x} line 4"]
    assert set(y_counts.by_cause) == {"too_long"} and y_counts.skipped
    too_long = y_counts.by_cause["too_long"]
    assert (too_long["count"], too_long["examples"]) == (y_counts.skipped, ["y_long"])
    assert re.fullmatch(r"\d+ tokens > max_seq_len=64", too_long["first_error"])  # why, without the sample's name
    assert (report.read, report.skipped) == (x_counts.read + y_counts.read, x_counts.skipped + y_counts.skipped)
    resumed = SkipLedger(max_skip_fraction=1.0)
    resumed.load_state_dict(ledger.state_dict())
    assert resumed.report("run") == report and resumed.report("epoch") == ledger.report("epoch")


def test_a_run_stopped_for_too_many_skips_says_which_dataset_they_came_from():
    ledger = SkipLedger(max_skip_fraction=0.1)
    ledger.expect_sources(["clean.jsonl", "broken.jsonl"])
    with pytest.raises(TooManySkipsError) as error:
        for i in range(100):
            source = "broken.jsonl" if i % 5 == 0 else "clean.jsonl"
            ledger.record(SkippedRecord(i, f"b{i}", "bad_image", "gone", source=source) if source == "broken.jsonl"
                          else {"id": f"c{i}", MIXTURE_SOURCE_KEY: source})  # fmt: skip
    assert "20 of the 100 records" in str(error.value)
    assert "per dataset: clean.jsonl: skipped 0 of 80 records; broken.jsonl: skipped 20 of 20 records: bad_image=20 " \
           "(e.g. b0, b5, b10, b15, b20; first: gone)" in str(error.value)  # fmt: skip
