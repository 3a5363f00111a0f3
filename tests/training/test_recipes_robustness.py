"""Runs that neither lose data unseen nor die of one record: `tune run` on JSON Lines with bad records, bad
configs, non-finite losses, LoRA training-state size and file errors (the error is always the last line)."""

import errno
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from support.datasets_records import write_jsonl, write_photos
from qwenvl_data.collate import Qwen2_5_VLCollator
from qwenvl_data.datasets import multimodal_chat_dataset
from qwenvl_data.models import load_hf_model, qwen2_5_vl_tiny, save_hf_model
from qwenvl_data.training import TrainingCheckpointer, packaged_vocab_transform
from qwenvl_data.training._data import RefillingBatches
from qwenvl_data.training._skips import SkipLedger, TooManySkipsError
from support.recipes_support import (
    REPO,
    TINY_OVERRIDES,
    as_cli,
    load_config,
    load_recipe,
    metrics,
    refusal_line,
    run_command,
)

TUNE_FULL = ["tune", "run", "recipes/full_finetune_single_device.py", "--config"]
# One record of each kind of fault, by id -> the cause it is counted under.
BAD_CAUSES = {
    "missing_image": "bad_image",
    "two_placeholders_one_image": "placeholder_mismatch",
    "no_assistant_turn": "no_trained_token",
    "video_fps_text": "unexpected_error",  # fps "fast": a TypeError, not a SampleError
    "data.jsonl line 6": "bad_conversation",  # a malformed JSON line: no id, named by its file and line
    "content_is_a_number": "bad_conversation",
}


def _question(record_id: str, image: str = "img/a.png", question: str = "<image>What color?") -> dict:
    return {"id": record_id, "images": [image],
            "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": "red"}]}  # fmt: skip


def _bad_records() -> list:
    video = {"type": "video", "video": ["img/f0.png", "img/f1.png"], "fps": "fast"}
    return [
        _question("missing_image", image="img/missing.png"),
        _question("two_placeholders_one_image", question="<image><image>Which?"),
        {"id": "no_assistant_turn", "images": ["img/a.png"], "messages": [{"role": "user", "content": "<image>Hi"}]},
        {"id": "video_fps_text", "messages": [{"role": "user", "content": [video, {"type": "text", "text": "What?"}]},
                                           {"role": "assistant", "content": "red"}]},  # fmt: skip
        '{"id": "broken", "messages": [',
        {"id": "content_is_a_number", "messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]},
    ]


def _jsonl_config(directory: Path, records: list, **dataset_kwargs) -> Path:
    """configs/tiny_synthetic.yaml reading `records` from a JSON Lines file (no held-out evaluation)."""
    write_photos(directory / "img", ["a.png", "f0.png", "f1.png"], size=(56, 56))
    data = write_jsonl(directory / "data.jsonl", records)
    cfg = OmegaConf.load(REPO / "configs" / "tiny_synthetic.yaml")
    del cfg["eval_dataset"]
    cfg.eval_every_n_steps = None  # it validates on eval_dataset
    cfg.dataset = {"_component_": "qwenvl_data.datasets.multimodal_chat_dataset", "source": "jsonl",
                   "data_files": str(data), "on_error": "skip", **dataset_kwargs}  # fmt: skip
    cfg.max_pixels = 3136
    path = directory / "config.yaml"
    OmegaConf.save(cfg, path)
    return path


def _failing_run(args: list[str], timeout: float = 300) -> str:
    """Run `tune run` expecting it to fail; returns the last line printed (stdout and stderr together)."""
    command = ["bash", "-c", 'exec "$@" 2>&1', "_", *args]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert result.returncode != 0, result.stdout[-3000:]
    assert "AttributeError" not in result.stdout, result.stdout[-3000:]
    return result.stdout.strip().splitlines()[-1]


# ---- skipped records: counted, shown, never the end of the run --------------------------------------------
@pytest.fixture(scope="module")
def skipping_run(tmp_path_factory):
    """Batch size 1, two epochs over 4 good records and one of each bad kind."""
    root = tmp_path_factory.mktemp("skips")
    good = [_question(f"good{i}") for i in range(4)]
    bad = _bad_records()
    # the malformed JSON line (bad[4]) is line 5, which names it
    config = _jsonl_config(root, good[:1] + bad[:3] + good[1:2] + [bad[4], bad[3], bad[5]] + good[2:])
    out = root / "out"
    overrides = {"batch_size": 1, "epochs": 2, "checkpointer.save_every_n_steps": 3}
    result = run_command([*TUNE_FULL, str(config), f"output_dir={out}", *as_cli(overrides)], timeout=600)
    return out, result.stdout


def test_batch_size_one_with_bad_records_trains_every_good_record_and_finishes(skipping_run):
    out, stdout = skipping_run
    run = metrics(out)
    assert run["steps"] == 2 * 4  # one step per good record, per epoch
    assert stdout.strip().splitlines()[-1] == f"HF checkpoint: {out / 'hf_model'}"
    # an epoch that skips cut short still ends with a saved state, from which a resume starts the next epoch
    states = sorted(p.name for p in (out / "training_state").iterdir())
    assert states[-1].endswith("8") and int(states[-1].rsplit("_", 1)[-1]) == 8


def test_every_epoch_end_prints_skips_by_cause_with_record_ids(skipping_run):
    _, stdout = skipping_run
    for epoch in (0, 1):
        line = next(line for line in stdout.splitlines() if line.startswith(f"epoch {epoch}: skipped"))
        assert line.startswith(f"epoch {epoch}: skipped 6 of 10 records: ")
        assert "unexpected_error=1 (e.g. video_fps_text (TypeError); first: TypeError: " in line
        for record_id, cause in BAD_CAUSES.items():
            assert f"{cause}=" in line and record_id in line


def test_metrics_json_gives_skips_by_cause_per_epoch_and_for_the_run(skipping_run):
    out, stdout = skipping_run
    run = metrics(out)
    expected = {}
    for record_id, cause in BAD_CAUSES.items():
        expected.setdefault(cause, []).append(record_id)
    for report in run["history"]["skipped_by_epoch"]:
        assert (report["read"], report["skipped"]) == (10, 6)
        # a record without an id is named by where it is: "<path>/data.jsonl line 6"
        assert {c: sorted(x.rsplit("/", 1)[-1] for x in e["examples"]) for c, e in report["by_cause"].items()} == {
            c: sorted(ids if c != "unexpected_error" else [f"{i} (TypeError)" for i in ids]) for c, ids in expected.items()
        }
    assert [r["epoch"] for r in run["history"]["skipped_by_epoch"]] == [0, 1]
    assert (run["skipped"]["read"], run["skipped"]["skipped"]) == (20, 12)
    assert {c: e["count"] for c, e in run["skipped"]["by_cause"].items()} == {c: 2 * len(i) for c, i in expected.items()}
    assert "skipped 12 of 20 records" in stdout


def test_progress_bar_and_metric_log_show_the_skips(skipping_run):
    out, stdout = skipping_run
    assert "skipped=12]" in stdout  # the bar's count so far, as it ends
    log = next((out / "logs").glob("*.txt")).read_text()
    assert "skipped/no_trained_token:1.0" in log and "skipped_records:12.0" in log


# ---- the run stops on what it cannot train through ----------------------------------------------------------
def _run_in_process(config: Path, overrides: dict) -> None:
    recipe = load_recipe("full_finetune_single_device")
    cfg = OmegaConf.load(config)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    recipe.run_recipe(recipe.FullFinetuneRecipeSingleDevice, cfg)


def test_more_skips_than_max_skip_fraction_stop_the_run_with_causes_and_ids(tmp_path, capsys):
    good = [{"id": f"t{i}", "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
            for i in range(110)]  # fmt: skip
    records = [_question(f"gone{i}", image="img/missing.png") if i % 10 == 9 else r for i, r in enumerate(good)]
    config = _jsonl_config(tmp_path, records)
    # the stop comes at the 100th record read, whatever the shuffle order put before it
    message = r"(\d+) of the 100 records read so far were skipped .* > max_skip_fraction=0.01\).*bad_image=\1 \(e.g. gone\d+"
    overrides = {"output_dir": str(tmp_path / "out"), "batch_size": 100}
    last = refusal_line(capsys, lambda: _run_in_process(config, overrides))
    assert last.startswith(f"{TooManySkipsError.__name__}: ") and re.search(message, last), last
    assert not (tmp_path / "out" / "hf_model").exists()


def test_all_bad_dataset_stops_at_once_with_its_causes(tmp_path, capsys):
    config = _jsonl_config(tmp_path, _bad_records())
    overrides = {"output_dir": str(tmp_path / "out"), "batch_size": 2}
    last = refusal_line(capsys, lambda: _run_in_process(config, overrides))
    assert last.startswith(f"{TooManySkipsError.__name__}: "), last
    assert re.search(r"epoch 0: no usable sample: all 6 records read were skipped.*no_trained_token=1", last), last
    assert not (tmp_path / "out" / "hf_model").exists()


NAN_OVERRIDES = {**TINY_OVERRIDES, "optimizer.lr": 1e6, "max_steps_per_epoch": 4, "eval_dataset.num_samples": 2}


def test_nonfinite_loss_stops_the_run_naming_the_step_and_writes_no_final_weights(tmp_path):
    out = tmp_path / "out"
    last = _failing_run([*TUNE_FULL, "configs/tiny_synthetic.yaml", f"output_dir={out}", *as_cli(NAN_OVERRIDES)])
    assert "NonFiniteLossError: step " in last and "the weights were not updated" in last
    step = int(last.split("step ")[1].split(":")[0])
    assert not (out / "hf_model").exists()
    saved = [int(p.name.removeprefix("step_")) for p in (out / "training_state").glob("step_*")]
    assert all(s < step for s in saved)  # only states from before the non-finite step


def test_nonfinite_steps_can_be_skipped_and_counted(tmp_path):
    out = tmp_path / "out"
    overrides = {**NAN_OVERRIDES, "output_dir": str(out), "on_nonfinite_loss": "skip_step"}
    recipe = load_recipe("full_finetune_single_device")
    recipe.run_recipe(recipe.FullFinetuneRecipeSingleDevice, load_config("tiny_synthetic", overrides))
    run = metrics(out)
    assert run["steps"] == 4 and run["nonfinite_steps_skipped"] == len(run["history"]["nonfinite_steps_skipped"]) > 0
    weights = load_file(out / "hf_model" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


# ---- configs are refused at start, with the real error last -------------------------------------------------
def test_bad_config_values_nested_typos_and_a_missing_device_are_refused_at_start(tmp_path):
    config = _jsonl_config(tmp_path, [_question("good")])
    bad = ["batch_size=2.7", "max_steps_per_epoch=-5", "dataset.data_file=x.jsonl", "max_skip_fraction=2"]
    if not torch.cuda.is_available():
        bad.append("device=cuda")
    last = _failing_run([*TUNE_FULL, str(config), f"output_dir={tmp_path / 'out'}", *bad])
    assert last.startswith("ConfigError: FullFinetuneRecipeSingleDevice: bad config: ")
    assert "`batch_size` must be int, got float 2.7" in last
    assert "`max_steps_per_epoch` must be >= 1, got -5" in last
    assert "unknown key `dataset.data_file` for qwenvl_data.datasets.multimodal_chat_dataset (did you mean `dataset.data_files`?)" in last
    assert "`max_skip_fraction` must be <= 1.0, got 2" in last
    if not torch.cuda.is_available():
        assert "`device=cuda` but this machine has no cuda device" in last
    assert not (tmp_path / "out").exists()  # nothing built, nothing written


# ---- files: errors name them; LoRA states hold only what was trained -----------------------------------------
def test_corrupt_checkpoint_safetensors_is_named_and_is_the_last_line(tmp_path):
    model_dir = save_hf_model(qwen2_5_vl_tiny(), tmp_path / "model")
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: 1000])
    overrides = {**TINY_OVERRIDES, "checkpointer.checkpoint_dir": str(model_dir), "init_std": "null"}
    last = _failing_run([*TUNE_FULL, "configs/tiny_synthetic.yaml", f"output_dir={tmp_path / 'out'}", *as_cli(overrides)])
    assert last.startswith(f"ValueError: {weights}: not a readable safetensors file")


def test_malformed_json_files_are_named(tmp_path):
    model_dir = save_hf_model(qwen2_5_vl_tiny(), tmp_path / "model")
    text = '{"model_type": "qwen2_5_vl",'  # cut after the comma: the next property is missing
    (model_dir / "config.json").write_text(text)
    with pytest.raises(ValueError, match=rf"{model_dir / 'config.json'}: not valid JSON: .* line 1 column {len(text) + 1}"):
        load_hf_model(model_dir)
    data = tmp_path / "train.json"
    data.write_text('[{"messages": []}, {"messages": ')
    with pytest.raises(ValueError, match=rf"{data} line 1: invalid JSON"):
        multimodal_chat_dataset(None, source="json", data_files=str(data))


def test_a_full_disk_during_a_save_names_the_directory_and_the_space_needed(tmp_path, monkeypatch):
    checkpointer = TrainingCheckpointer(output_dir=str(tmp_path))
    model = torch.nn.Linear(256, 256)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("torch.save", disk_full)
    with pytest.raises(OSError, match=r"writing .*step_0000001.partial failed: .*No space left.*needs about 0.3 MiB") as error:
        checkpointer.save_state(1, model, optimizer, {})
    assert error.value.errno == errno.ENOSPC
    assert checkpointer.latest_state() is None


def test_a_write_limit_hit_by_tune_run_is_named_with_the_space_needed(tmp_path):
    """A real failed write (the file-size limit of the shell) while saving the first training state."""
    out = tmp_path / "out"
    overrides = {**TINY_OVERRIDES, "max_steps_per_epoch": 1, "eval_dataset.num_samples": 4}
    tune = shlex.join([*TUNE_FULL, "configs/tiny_synthetic.yaml", f"output_dir={out}", *as_cli(overrides)])
    result = subprocess.run(["bash", "-c", f"ulimit -f 4096; {tune} 2>&1"], cwd=REPO, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    last = result.stdout.strip().splitlines()[-1]
    assert result.returncode != 0
    # torch.save's own message is "[enforce fail at inline_container.cc:...]", naming no file
    assert last.startswith("OSError: [Errno ") and f"writing {out / 'training_state'}" in last
    assert "The save needs about" in last and "MiB are free on that disk" in last


def _lora_run(out: Path, **overrides) -> None:
    recipe = load_recipe("lora_finetune_single_device")
    settings = {**TINY_OVERRIDES, "output_dir": str(out), "max_steps_per_epoch": 4, "eval_dataset.num_samples": 4,
                "checkpointer.save_every_n_steps": 2, **overrides}  # fmt: skip
    recipe.run_recipe(recipe.LoRAFinetuneRecipeSingleDevice, load_config("tiny_synthetic_lora", settings))


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    _lora_run(root / "straight")
    _lora_run(root / "resumed", stop_after_step=2)
    _lora_run(root / "resumed", resume_from_checkpoint=True)
    return root / "straight", root / "resumed"


def test_lora_training_state_holds_the_adapters_not_the_frozen_base(lora_runs):
    straight, _ = lora_runs
    state = next((straight / "training_state").glob("step_*"))
    state_bytes = sum(f.stat().st_size for f in state.rglob("*") if f.is_file())
    model_bytes = (straight / "hf_model" / "model.safetensors").stat().st_size
    adapter_bytes = (straight / "adapter" / "adapter_model.safetensors").stat().st_size
    assert state_bytes < model_bytes / 4  # it was larger than the whole model
    assert state_bytes < 3 * adapter_bytes + 2**20  # adapters + AdamW's two moments + small files


def test_lora_resume_from_the_small_state_is_bit_identical(lora_runs):
    straight, resumed = lora_runs
    for name in ("adapter/adapter_model.safetensors", "hf_model/model.safetensors"):
        expected, actual = load_file(straight / name), load_file(resumed / name)
        assert expected.keys() == actual.keys()
        assert all(torch.equal(expected[k], actual[k]) for k in expected), name
    assert metrics(resumed)["history"]["loss"] == metrics(straight)["history"]["loss"]


# ---- refilled batches resume exactly ----------------------------------------------------------------------
@pytest.mark.parametrize("num_workers", [0, 2])
def test_refilled_batches_resume_with_no_record_seen_twice_or_skipped(tmp_path, num_workers):
    good = [_question(f"g{i}") for i in range(10)]
    records = [r for pair in zip(good, _bad_records() + [None] * 4) for r in pair if r is not None]
    _jsonl_config(tmp_path, records)
    transform = packaged_vocab_transform(max_seq_len=256, max_pixels=3136)
    dataset = multimodal_chat_dataset(transform, source="jsonl", data_files=str(tmp_path / "data.jsonl"), on_error="skip")

    def batches(state=None):
        ledger = SkipLedger(max_skip_fraction=1.0)
        refill = RefillingBatches(dataset, lambda samples: [s["id"] for s in samples], 3, ledger, shuffle=True,
                                  seed=5, num_workers=num_workers)  # fmt: skip
        refill.start_epoch(1, state)
        return refill, ledger

    straight, ledger = batches()
    all_ids = list(iter(straight.next_batch, None))
    assert [len(b) for b in all_ids] == [3, 3, 3, 1] and ledger.read_in_epoch == 16  # never an empty batch
    first, _ = batches()
    head = [first.next_batch() for _ in range(2)]
    rest, _ = batches(first.state_dict())
    assert head + list(iter(rest.next_batch, None)) == all_ids
    assert sorted(i for b in all_ids for i in b) == sorted(f"g{i}" for i in range(10))


def test_dataset_skip_stats_keep_example_ids_across_dataloader_workers(tmp_path):
    _jsonl_config(tmp_path, _bad_records() + [_question("good")])
    transform = packaged_vocab_transform(max_seq_len=256, max_pixels=3136)
    dataset = multimodal_chat_dataset(transform, source="jsonl", data_files=str(tmp_path / "data.jsonl"), on_error="skip")
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2, collate_fn=lambda s: s)
    assert [s["id"] for s in loader if s is not None] == ["good"]
    # worker 0 reads records 0, 2, 4, 6 and worker 1 records 1, 3, 5: both rows are merged
    assert dataset.processor.stats.examples() == {
        "bad_image": ["missing_image"], "placeholder_mismatch": ["two_placeholders_one_image"],
        "bad_conversation": [f"{tmp_path / 'data.jsonl'} line 5", "content_is_a_number"],
        "no_trained_token": ["no_assistant_turn"],
        "unexpected_error": ["video_fps_text (TypeError)"],
    }  # fmt: skip


def test_an_unexpected_exception_under_on_error_raise_names_the_record_index_and_id(tmp_path):
    _jsonl_config(tmp_path, [_question("good"), _bad_records()[3]])
    transform = packaged_vocab_transform(max_seq_len=256, max_pixels=3136)
    dataset = multimodal_chat_dataset(transform, source="jsonl", data_files=str(tmp_path / "data.jsonl"))
    with pytest.raises(TypeError) as error:
        dataset[1]
    assert "while processing sample 1 (video_fps_text)" in error.value.__notes__


def test_a_sample_the_collator_refuses_is_counted_and_its_place_refilled(tmp_path):
    short = [_question(f"short{i}") for i in range(4)]
    long = _question("long", question="<image>" + "Describe every detail. " * 20)
    _jsonl_config(tmp_path, short[:1] + [long] + short[1:])
    transform = packaged_vocab_transform(max_seq_len=256, max_pixels=3136)
    dataset = multimodal_chat_dataset(transform, source="jsonl", data_files=str(tmp_path / "data.jsonl"))
    assert len(dataset[1]["tokens"]) > 64 >= max(len(dataset[i]["tokens"]) for i in (0, 2, 3, 4))
    ledger = SkipLedger(max_skip_fraction=1.0)
    refill = RefillingBatches(dataset, Qwen2_5_VLCollator(max_seq_len=64), 2, ledger, shuffle=False, seed=0)
    refill.start_epoch(0)
    assert [refill.next_batch()["tokens"].shape for _ in range(2)] == [(2, 64), (2, 64)]
    assert refill.next_batch() is None
    too_long = f"{len(dataset[1]['tokens'])} tokens > max_seq_len=64"  # the first error, without the sample's name
    assert ledger.report("epoch").by_cause == {"too_long": {"count": 1, "examples": ["long"], "first_error": too_long}}


def test_a_dataset_that_skips_by_returning_none_has_its_records_named_by_their_index():
    """None from ``dataset[i]`` becomes a SkippedRecord of record i (not of its place in the shuffled order)."""

    class EveryThirdMissing(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 9

        def __getitem__(self, index: int) -> dict | None:
            return None if index % 3 == 2 else {"id": f"r{index}"}

    dataset = EveryThirdMissing()
    ledger = SkipLedger(max_skip_fraction=1.0)
    refill = RefillingBatches(dataset, lambda samples: [s["id"] for s in samples], 2, ledger, shuffle=True, seed=3)
    refill.start_epoch(0)
    list(iter(refill.next_batch, None))
    order = list(torch.utils.data.DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=3))
    assert order != sorted(order)  # the read order is not the index order
    assert ledger.report("epoch").by_cause == {
        "invalid_sample": {"count": 3, "examples": [f"#{i}" for i in order if i % 3 == 2],
                           "first_error": "skipped by the dataset"}
    }
