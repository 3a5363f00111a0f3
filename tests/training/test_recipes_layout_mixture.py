"""The layouts people bring (LLaMA-Factory's alpaca, tool conversations in three spellings, LLaVA-Video with a real
clip), each with a bad record, as .json, .jsonl and a saved `datasets` directory, mixed from the command line
(`dataset.mixture` + `dataset.weights`): `tune run` trains on the mixture and reports records read and skipped per
dataset; `inspect` reports each dataset's layouts, unread fields and tool turns."""

import json
import math

import pytest
from support.layout_corpus import ALPACA, LLAVA_VIDEO, TOOLS, write_layout_corpus
from support.recipes_support import metrics, run_command

from qwenvl_data.inspect import main

RECORDS = {"alpaca": len(ALPACA), "tools": len(TOOLS), "llava_video": len(LLAVA_VIDEO)}
CAUSES = {"alpaca": "bad_image", "tools": "bad_conversation", "llava_video": "bad_video"}  # of each one bad record
WHY = {"alpaca": "missing.png does not exist", "tools": "['instruction']", "llava_video": "missing.mp4 does not exist"}
BAD_IDS = {"alpaca": "a_missing_image", "tools": "t_unread_field", "llava_video": "v_missing_video"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_layout_corpus(tmp_path_factory.mktemp("layouts"))


def mixture(corpus) -> list[str]:
    """The command line's mixture: alpaca (.json) 2, tools (.jsonl) 2, LLaVA-Video (saved directory) 1."""
    return [f"dataset.mixture=[{corpus['alpaca']}, {corpus['tools']}, {corpus['llava_video']}]",
            "dataset.weights=[2, 2, 1]"]  # fmt: skip


def test_tune_run_on_a_command_line_mixture_reports_each_dataset_read_and_skipped(corpus, tmp_path):
    """3 steps of 4 samples from configs/tiny_streaming.yaml: every dataset is drawn; its records are read pass
    after pass (each pass reads each record once), so its one bad record is skipped once per pass that reached
    it; the datasets' counts add up to the run's, and the console prints them."""
    out = tmp_path / "run"
    result = run_command(["tune", "run", "recipes/full_finetune_single_device.py", "--config",
                          "configs/tiny_streaming.yaml", *mixture(corpus), "tokenizer.max_seq_len=512", "batch_size=4",
                          "max_steps_per_epoch=3", f"output_dir={out}"], timeout=420)  # fmt: skip
    report = metrics(out)["skipped"]
    by_source = report["by_source"]
    assert sorted(by_source) == sorted(str(path) for path in corpus.values())
    for layout, path in corpus.items():
        source, records = by_source[str(path)], RECORDS[layout]
        read, skipped = source["read"], source["skipped"]
        assert read >= 1 and read // records <= skipped <= math.ceil(read / records), (layout, source)
        assert math.ceil(read / records) - 1 <= source["passes_started"] <= read // records, (layout, source)
        if skipped:
            assert list(source["by_cause"]) == [CAUSES[layout]]
            entry = source["by_cause"][CAUSES[layout]]
            assert (entry["count"], entry["examples"]) == (skipped, [BAD_IDS[layout]])
            assert WHY[layout] in entry["first_error"]  # the first error of the cause says why
        assert f"  {path}: skipped {skipped} of {read} records" in result.stdout
    for key in ("read", "skipped", "passes_started"):
        assert sum(source[key] for source in by_source.values()) == report[key], key
    assert report["read"] - report["skipped"] == 3 * 4  # every usable sample read went into a step
    losses = metrics(out)["history"]["loss"]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    assert (out / "hf_model" / "model.safetensors").is_file() and (out / "hf_model" / "config.json").is_file()
    assert result.stdout.strip().splitlines()[-1] == f"HF checkpoint: {out / 'hf_model'}"


MAP_STYLE_CONFIG = """\
tokenizer:
  _component_: qwenvl_data.training.packaged_vocab_transform
  max_seq_len: 1024
  max_pixels: 7056
dataset:
  _component_: qwenvl_data.datasets.multimodal_chat_dataset
  source: jsonl
  data_files: null
  on_error: skip
"""


@pytest.mark.parametrize("kind", ["streaming", "map_style"])
def test_inspect_reports_layouts_unread_fields_and_tool_turns_of_each_dataset(corpus, tmp_path, capsys, kind):
    if kind == "streaming":
        config = ["--config", "configs/tiny_streaming.yaml", "tokenizer.max_seq_len=1024"]
    else:
        (tmp_path / "map_style.yaml").write_text(MAP_STYLE_CONFIG)
        config = ["--config", str(tmp_path / "map_style.yaml")]
    out = tmp_path / "report.json"
    code = main([*config, *mixture(corpus), "--num-workers", "1", "--no-progress", "--json", str(out)])
    report = json.loads(out.read_text())
    assert code == 1 and (report["records"], report["usable"]) == (11, 8)
    by_source = {layout: report["by_source"][str(path)] for layout, path in corpus.items()}
    assert [source["weight"] for source in by_source.values()] == [2, 2, 1]
    assert by_source["alpaca"]["layouts"] == {"alpaca": 4}
    assert by_source["tools"]["layouts"] == {"sharegpt": 3, "openai": 1}  # LLaMA-Factory, ms-swift; OpenAI
    assert by_source["tools"]["unread_fields"] == {"instruction": 1}
    assert by_source["tools"]["tool_turns"] == {"records": 3, "tool_calls": 3, "tool_results": 3}
    assert by_source["llava_video"]["layouts"] == {"sharegpt": 3}
    for layout, source in by_source.items():
        assert (source["records"], source["unusable"]) == (RECORDS[layout], 1)
        assert source["unusable_by_cause"] == {CAUSES[layout]: {"count": 1, "examples": [BAD_IDS[layout]]}}
    assert report["videos_per_sample"] == {"0": 6, "1": 2}  # the LLaVA-Video `<image>` read as the clip
    assert {(r["source"], r["id"]) for r in report["unusable_records"]} == {
        (str(corpus[layout]), record_id) for layout, record_id in BAD_IDS.items()}
    console = capsys.readouterr().out
    assert f"dataset {corpus['tools']} (weight 2): records: 4, usable: 3, unusable: 1; by layout: sharegpt: 3, " \
           "openai: 1; refused for unread fields: instruction: 1; left out as metadata (no layout reads them): none; " \
           "tool turns: 3 records, 3 tool calls, 3 tool " \
           "results; unusable [bad_conversation]: 1 (e.g. ids t_unread_field)" in console  # fmt: skip
