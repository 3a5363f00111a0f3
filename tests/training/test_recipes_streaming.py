"""Recipes on a streaming dataset and on a weighted mixture: a run stopped mid-stream and resumed reaches
the weights of an uninterrupted run bit for bit (the stream position is part of the training state)."""

import re

import datasets
import pytest
import torch
from safetensors.torch import load_file

from support.datasets_records import llava_turns, write_jsonl, write_photos
from support.recipes_support import (
    TINY_OVERRIDES,
    as_cli,
    load_config,
    load_recipe,
    metrics,
    refusal_line,
    run_command,
)

NUM_RECORDS = 20


@pytest.fixture(scope="module")
def photo_corpus(tmp_path_factory):
    """LLaVA records over generated photos of a few sizes, split over two JSON Lines shards."""
    root = tmp_path_factory.mktemp("stream_recipe")
    names = [f"images/p{i}.png" for i in range(NUM_RECORDS)]
    write_photos(root, names[:10], size=(56, 56))
    write_photos(root, names[10:], size=(84, 56))
    records = [
        {"id": f"s{i}", "image": name, "conversations": llava_turns("<image>\nWhat is this?", f"Photo {i}.")}
        for i, name in enumerate(names)
    ]
    return [write_jsonl(root / "a.jsonl", records[:11]), write_jsonl(root / "b.jsonl", records[11:])]


def _streaming_overrides(files, output_dir, **extra):
    overrides = {
        **TINY_OVERRIDES, "epochs": 2, "max_steps_per_epoch": 3, 
        "dataset": {"_component_": "qwenvl_data.datasets.streaming_chat_dataset", "source": "jsonl",
                    "data_files": [str(f) for f in files], "shuffle_buffer_size": 4, "seed": 3},
        "output_dir": str(output_dir), **extra,
    }  # fmt: skip
    overrides.pop("dataset.num_samples")
    overrides.pop("dataset.image_size")
    return overrides


def _run(overrides: dict) -> None:
    overrides = dict(overrides)
    dataset = overrides.pop("dataset")
    cfg = load_config("tiny_synthetic", overrides)
    cfg.dataset = dataset  # replaced, not merged into the synthetic dataset's keys
    cfg.eval_dataset = cfg.eval_every_n_steps = None
    recipe = load_recipe("full_finetune_single_device")
    recipe.run_recipe(recipe.FullFinetuneRecipeSingleDevice, cfg)


def _assert_same_weights(a, b):
    expected, actual = load_file(a / "hf_model" / "model.safetensors"), load_file(b / "hf_model" / "model.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def test_two_rank_streaming_tune_run_stopped_and_resumed_is_bit_identical(photo_corpus, tmp_path):
    """configs/tiny_streaming.yaml under FSDP2 on 2 ranks: 2 epochs of 3 steps of 2 x 2 samples read 24 of the
    20 records (the stream's second pass starts in epoch 2); a run stopped at the epoch boundary and resumed
    ends with the uninterrupted run's losses and weights, bit for bit."""
    command = ["tune", "run", "--nproc_per_node", "2", "recipes/full_finetune_distributed.py",
               "--config", "configs/tiny_streaming.yaml"]  # fmt: skip
    overrides = {
        "dataset.data_files": [str(f) for f in photo_corpus], "dataset.shuffle_buffer_size": 4, "batch_size": 2,
        "epochs": 2, "max_steps_per_epoch": 3, "checkpointer.save_every_n_steps": 2,
    }  # fmt: skip
    run_command([*command, *as_cli({**overrides, "output_dir": str(tmp_path / "straight")})], timeout=420)
    overrides["output_dir"] = str(tmp_path / "resumed")
    run_command([*command, *as_cli({**overrides, "stop_after_step": 3})], timeout=420)
    resumed = run_command([*command, *as_cli({**overrides, "resume_from_checkpoint": True})], timeout=420)
    assert "resumed from" in resumed.stdout and "at step 3 (epoch 1)" in resumed.stdout
    assert metrics(tmp_path / "resumed")["history"]["loss"] == metrics(tmp_path / "straight")["history"]["loss"]
    _assert_same_weights(tmp_path / "straight", tmp_path / "resumed")


def test_mixture_run_resumed_from_a_mid_epoch_state_is_bit_identical(photo_corpus, tmp_path):
    """A map-style synthetic dataset (weight 3) mixed with the streamed photos (weight 1), read by a DataLoader
    worker: resuming from the state saved mid-epoch finishes with the uninterrupted run's weights."""
    mixture = [
        {"_component_": "qwenvl_data.datasets.synthetic_vqa_dataset", "num_samples": 32, "image_size": [56, 56],
         "weight": 3},
        {"_component_": "qwenvl_data.datasets.streaming_chat_dataset", "data_files": [str(f) for f in photo_corpus],
         "shuffle_buffer_size": 4, "weight": 1},
    ]  # fmt: skip
    straight = _streaming_overrides(
        photo_corpus, tmp_path / "straight", dataset=mixture, num_workers=1, **{"checkpointer.keep_last_n": 4}
    )
    _run(straight)
    mid_epoch = tmp_path / "straight" / "training_state" / "step_0000004"  # a periodic save, mid-way into epoch 2
    _run({**straight, "output_dir": str(tmp_path / "resumed"), "resume_from_checkpoint": str(mid_epoch)})
    assert metrics(tmp_path / "resumed")["history"]["loss"] == metrics(tmp_path / "straight")["history"]["loss"]
    _assert_same_weights(tmp_path / "straight", tmp_path / "resumed")


def test_stream_of_unknown_length_needs_max_steps_per_epoch(photo_corpus, tmp_path, capsys):
    overrides = _streaming_overrides(photo_corpus, tmp_path / "run", max_steps_per_epoch=None)
    last_line = refusal_line(capsys, lambda: _run(overrides))
    assert re.search(r"^ConfigError: .*stream of unknown length.*max_steps_per_epoch", last_line), last_line


def test_mixture_item_without_weight_is_named(photo_corpus, tmp_path, capsys):
    mixture = [{"_component_": "qwenvl_data.datasets.streaming_chat_dataset", "data_files": str(photo_corpus[0])}]
    overrides = _streaming_overrides(photo_corpus, tmp_path / "run", dataset=mixture)
    last_line = refusal_line(capsys, lambda: _run(overrides))
    assert re.search(r"^ConfigError: .*dataset\[0\].*needs a `weight`", last_line), last_line


def test_a_saved_dataset_shorter_than_one_step_is_read_again_and_the_report_says_so(tmp_path, capsys):
    """tiny_streaming.yaml with `dataset.source=<saved dataset>` alone: 4 records (one naming a missing image),
    a step of 16 samples. The stream reads its data again until the step is full, says so on the console and in
    metrics.json, and its skip counts count each pass's read of the bad record."""
    saved = tmp_path / "saved"
    write_photos(saved, [f"p{i}.png" for i in range(3)], size=(56, 56))
    records = [
        {"id": f"s{i}", "image": f"p{i}.png" if i < 3 else "missing.png",
         "conversations": llava_turns("<image>\nWhat is this?", f"Photo {i}.")}
        for i in range(4)
    ]  # fmt: skip
    datasets.Dataset.from_list(records).save_to_disk(str(saved))
    cfg = load_config("tiny_streaming", {"dataset.source": str(saved), "output_dir": str(tmp_path / "run"),
                                         "max_steps_per_epoch": 1})  # fmt: skip
    recipe = load_recipe("full_finetune_single_device")
    recipe.run_recipe(recipe.FullFinetuneRecipeSingleDevice, cfg)
    # 16 usable samples at 3 per pass: 5 passes whole, then part of a 6th (started again 5 times)
    epoch = metrics(tmp_path / "run")["history"]["skipped_by_epoch"][0]
    assert epoch["passes_started"] == 5
    assert epoch["read"] - epoch["skipped"] == 16 and epoch["skipped"] in (5, 6)
    assert epoch["by_cause"]["bad_image"]["count"] == epoch["skipped"]
    console = capsys.readouterr().out
    assert "reading it again (restart 5 of this reader)" in console
    assert f"skipped {epoch['skipped']} of {epoch['read']} records (the data ran out and was read again 5 times" in console
