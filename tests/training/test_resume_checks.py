"""What a resume trusts: the state's data files and settings (a fingerprint, refused with a named diff unless
``resume_overrides`` accepts it), its bytes (checksums, with a fallback to the older intact state), and the
``output_dir`` (one run at a time). Saves that fail (a full disk, a kill, a flipped byte) leave nothing half
written that a resume would pick."""

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import SafetensorError

from qwenvl_data.training import TrainingCheckpointer
from qwenvl_data.training._checkpoint import DamagedStateError
from qwenvl_data.training._fingerprint import ResumeMismatchError, check_resumable, run_fingerprint
from qwenvl_data.training._output_lock import LOCK_NAME, OutputDirBusyError, OutputDirLock
from support.recipes_support import REPO, TINY_OVERRIDES, load_config, load_recipe, refusal_line

# ---- the data files and settings a state depends on ----------------------------------------------------------


def _data_config(data_files) -> OmegaConf:
    return OmegaConf.create({"seed": 0, "batch_size": 4, "dataset": {"source": "jsonl", "data_files": data_files}})


def _refusal(saved: dict, cfg, tmp_path, overrides=()) -> str:
    with pytest.raises(ResumeMismatchError) as error:
        check_resumable(saved, run_fingerprint(cfg, 1), overrides, tmp_path / "step_1")
    return str(error.value)


@pytest.mark.parametrize("edit", ["append", "same_size_edit", "truncate"])
def test_an_edited_data_file_is_a_named_refusal_unless_overridden(tmp_path, edit):
    data = tmp_path / "train.jsonl"
    data.write_text('{"id": "a", "answer": "cat"}\n{"id": "b", "answer": "dog"}\n')
    cfg = _data_config(str(data))
    saved = run_fingerprint(cfg, 1)
    text = data.read_text()
    data.write_text({"append": text + '{"id": "c"}\n', "same_size_edit": text.replace("cat", "cow"),
                     "truncate": text.splitlines(keepends=True)[0]}[edit])  # fmt: skip
    message = _refusal(saved, cfg, tmp_path)
    assert f"data_files:{data}: changed (" in message and "resume_overrides=[data_files]" in message
    accepted = check_resumable(saved, run_fingerprint(cfg, 1), ["data_files"], tmp_path / "step_1")
    assert accepted == [f"data_files:{data}: " + message.split(f"data_files:{data}: ")[1].split("). Resume")[0]]


def test_a_new_or_removed_file_of_a_glob_is_refused_and_a_touched_one_is_not(tmp_path):
    for name in ("a", "b"):
        (tmp_path / f"{name}.jsonl").write_text(f'{{"id": "{name}"}}\n')
    cfg = _data_config([str(tmp_path / "*.jsonl")])
    saved = run_fingerprint(cfg, 1)
    os.utime(tmp_path / "a.jsonl", (1, 1))  # a copy with another mtime but the same bytes is the same data
    assert check_resumable(saved, run_fingerprint(cfg, 1), [], tmp_path) == []
    (tmp_path / "c.jsonl").write_text('{"id": "c"}\n')
    (tmp_path / "b.jsonl").unlink()
    message = _refusal(saved, cfg, tmp_path)
    assert f"data_files:{tmp_path / 'b.jsonl'}: gone" in message
    assert f"data_files:{tmp_path / 'c.jsonl'}: new" in message


@pytest.mark.parametrize("key, value", [("seed", 1), ("batch_size", 8), ("gradient_accumulation_steps", 2),
                                        ("max_steps_per_epoch", 3), ("dtype", "bf16"), ("dataset.shuffle", False)])
def test_each_setting_that_changes_the_records_or_the_computation_is_a_named_refusal(tmp_path, key, value):
    cfg = _data_config("jsonl")
    OmegaConf.update(cfg, "gradient_accumulation_steps", 1, force_add=True)
    OmegaConf.update(cfg, "max_steps_per_epoch", 4, force_add=True)
    OmegaConf.update(cfg, "dtype", "fp32", force_add=True)
    saved = run_fingerprint(cfg, 1)
    OmegaConf.update(cfg, key, value, force_add=True)
    assert f"({key}: " in _refusal(saved, cfg, tmp_path) or f"; {key}: " in _refusal(saved, cfg, tmp_path)
    assert check_resumable(saved, run_fingerprint(cfg, 1), [key], tmp_path)  # accepted, and listed for the log


def test_another_number_of_ranks_and_output_settings(tmp_path):
    cfg = _data_config("jsonl")
    saved = run_fingerprint(cfg, 2)
    with pytest.raises(ResumeMismatchError, match=r"world_size: 2 -> 1"):
        check_resumable(saved, run_fingerprint(cfg, 1), [], tmp_path)
    OmegaConf.update(cfg, "output_dir", "elsewhere", force_add=True)
    OmegaConf.update(cfg, "stop_after_step", 9, force_add=True)
    assert check_resumable(run_fingerprint(_data_config("jsonl"), 1), run_fingerprint(cfg, 1), [], tmp_path) == []


# ---- recipe level: refused at setup, overrides take effect ---------------------------------------------------
RESUME = {**TINY_OVERRIDES, "max_steps_per_epoch": 4, "eval_dataset.num_samples": 2}
SAVED_LR = OmegaConf.load(REPO / "configs" / "tiny_synthetic.yaml").optimizer.lr  # the stopped run's lr


def _recipe():
    recipe = load_recipe("full_finetune_single_device")
    return recipe, recipe.FullFinetuneRecipeSingleDevice


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("stopped") / "out"
    module, cls = _recipe()
    module.run_recipe(cls, load_config("tiny_synthetic", {**RESUME, "output_dir": str(out), "stop_after_step": 2}))
    return out


def _setup_resumed(out, **changes):
    module, cls = _recipe()
    cfg = load_config("tiny_synthetic", {**RESUME, "output_dir": str(out), "resume_from_checkpoint": True, **changes})
    recipe = cls(cfg)
    try:
        recipe.setup(cfg)
    finally:
        recipe.cleanup()
    return recipe


def test_a_resume_with_another_batch_size_or_seed_is_refused_naming_them(stopped_run):
    with pytest.raises(ResumeMismatchError, match=r"cannot resume from .*step_0000002: .*\(batch_size: 4 -> 2; "
                                                  r"seed: 0 -> 5\)"):  # fmt: skip
        _setup_resumed(stopped_run, batch_size=2, seed=5)


def test_an_accepted_new_lr_takes_effect_from_the_saved_step(stopped_run, capsys):
    recipe = _setup_resumed(stopped_run, **{"optimizer.lr": 1e-4, "resume_overrides": ["optimizer.lr"]})
    out = capsys.readouterr().out
    assert f"changes accepted by resume_overrides: optimizer.lr: {SAVED_LR} -> 0.0001" in out
    assert "the optimizer takes the configured lr=0.0001" in out
    # the same schedule, built fresh with the new lr and stepped to the saved step, gives the lr to expect
    fresh = torch.optim.AdamW(torch.nn.Linear(1, 1).parameters(), lr=1e-4)
    schedule = OmegaConf.load(REPO / "configs" / "tiny_synthetic.yaml").lr_scheduler
    from torchtune.training.lr_schedulers import get_cosine_schedule_with_warmup

    expected = get_cosine_schedule_with_warmup(fresh, schedule.num_warmup_steps, recipe.total_steps)
    for _ in range(2):
        fresh.step()
        expected.step()
    assert recipe.optimizer.param_groups[0]["lr"] == fresh.param_groups[0]["lr"]
    assert recipe.lr_scheduler.base_lrs == [1e-4]


def test_resuming_a_state_at_the_runs_last_step_says_nothing_is_left_to_train(stopped_run, capsys):
    _setup_resumed(stopped_run, max_steps_per_epoch=2, resume_overrides=["max_steps_per_epoch"])
    out = capsys.readouterr().out
    assert "at step 2 (epoch 1)" in out
    assert "the state is the end of the run (2 steps): nothing left to train" in out


def test_a_new_lr_without_an_override_is_refused_not_dropped(stopped_run):
    with pytest.raises(ResumeMismatchError, match=rf"optimizer.lr: {SAVED_LR} -> 0.0001.*resume_overrides=\[optimizer.lr\]"):
        _setup_resumed(stopped_run, **{"optimizer.lr": 1e-4})


# ---- checksums: a damaged state is named, the older intact one used ------------------------------------------
def _linear_states(tmp_path, steps=(1, 2)):
    checkpointer = TrainingCheckpointer(output_dir=str(tmp_path), keep_last_n=len(steps))
    model = torch.nn.Linear(64, 64)
    optimizer = torch.optim.AdamW(model.parameters())
    for step in steps:
        model(torch.ones(1, 64)).sum().backward()
        optimizer.step()
        checkpointer.save_state(step, model, optimizer, {"global_step": step})
    return checkpointer, model, optimizer


def _distcp(state):
    return next((state / "model_optimizer").glob("*.distcp"))


def _flip(path, offset=200, count=16):
    data = bytearray(path.read_bytes())
    data[offset:offset + count] = bytes(b ^ 0xFF for b in data[offset:offset + count])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["corrupt_16_bytes", "truncate", "delete", "trainer_file"])
def test_a_damaged_newest_state_is_named_and_the_older_intact_one_is_used(tmp_path, capsys, damage):
    checkpointer, _, _ = _linear_states(tmp_path)
    newest = checkpointer.latest_state()
    target = newest / "trainer_rank0.pt" if damage == "trainer_file" else _distcp(newest)
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:100])
    elif damage == "delete":
        target.unlink()
    else:
        _flip(target)
    chosen = checkpointer.resumable_state(True)
    assert chosen.name == "step_0000001"
    said = capsys.readouterr().out
    assert f"training state {newest} is damaged ({target}: " in said
    assert f"resuming from the older intact {chosen} instead" in said
    fresh = torch.nn.Linear(64, 64)
    assert checkpointer.load_state(chosen, fresh, torch.optim.AdamW(fresh.parameters()))["global_step"] == 1


def test_no_intact_state_or_a_damaged_named_one_stops_naming_the_files(tmp_path):
    checkpointer, _, _ = _linear_states(tmp_path)
    states = [checkpointer.state_root / "step_0000001", checkpointer.state_root / "step_0000002"]
    _flip(_distcp(states[1]))
    with pytest.raises(DamagedStateError, match=rf"{_distcp(states[1])}: checksum mismatch"):
        checkpointer.resumable_state(str(states[1]))
    (states[0] / "trainer_rank0.pt").unlink()
    missing = states[0] / "trainer_rank0.pt"
    with pytest.raises(DamagedStateError, match=rf"no intact training state .*{states[1]}.*{missing}: missing"):
        checkpointer.resumable_state(True)


# ---- fault injection on saves: what is left on disk ------------------------------------------------------------
def _left_on_disk(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir() and "model_optimizer" not in p.name)


def test_a_full_disk_during_a_state_save_leaves_no_partial_and_the_older_state_intact(tmp_path, monkeypatch):
    checkpointer, model, optimizer = _linear_states(tmp_path, steps=(1,))

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("torch.save", disk_full)
    with pytest.raises(OSError, match=r"step_0000002.partial failed: No space left on device") as error:
        checkpointer.save_state(2, model, optimizer, {})
    assert error.value.errno == errno.ENOSPC
    assert _left_on_disk(tmp_path) == ["training_state", "training_state/step_0000001"]
    assert checkpointer.resumable_state(True).name == "step_0000001"


def test_a_full_disk_during_an_hf_save_is_named_without_safetensors_error_or_partial(tmp_path, monkeypatch):
    from qwenvl_data.models import qwen2_5_vl_tiny

    def disk_full(tensors, path, metadata=None):
        with open(path, "wb") as file:
            file.write(b"half")
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                              '"No space left on device" })')  # fmt: skip

    monkeypatch.setattr("qwenvl_data._files.save_file", disk_full)
    checkpointer = TrainingCheckpointer(output_dir=str(tmp_path))
    with pytest.raises(OSError, match=r"writing .*hf_model.partial.* failed: .*No space left") as error:
        checkpointer.save_hf(qwen2_5_vl_tiny(), lambda: None)
    assert error.value.errno == errno.ENOSPC and not isinstance(error.value, SafetensorError)
    assert list(tmp_path.iterdir()) == []


KILLED_SAVE = """
import os, signal, sys, torch
from qwenvl_data.training import TrainingCheckpointer
checkpointer = TrainingCheckpointer(output_dir=sys.argv[1], keep_last_n=2)
model = torch.nn.Linear(64, 64)
optimizer = torch.optim.AdamW(model.parameters())
checkpointer.save_state(1, model, optimizer, {"global_step": 1})
torch.save = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)  # dies after DCP wrote its files
checkpointer.save_state(2, model, optimizer, {"global_step": 2})
"""


def test_a_kill_mid_save_leaves_the_older_state_usable_and_the_next_save_removes_the_partial(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(tmp_path)], env=env, capture_output=True)
    assert result.returncode == -signal.SIGKILL
    assert _left_on_disk(tmp_path) == ["training_state", "training_state/.step_0000002.partial",
                                       "training_state/step_0000001"]  # fmt: skip
    checkpointer = TrainingCheckpointer(output_dir=str(tmp_path), keep_last_n=2)
    assert checkpointer.resumable_state(True).name == "step_0000001"
    model = torch.nn.Linear(64, 64)
    optimizer = torch.optim.AdamW(model.parameters())
    checkpointer.load_state(checkpointer.state_root / "step_0000001", model, optimizer)
    checkpointer.save_state(3, model, optimizer, {"global_step": 3})
    assert _left_on_disk(tmp_path) == ["training_state", "training_state/step_0000001", "training_state/step_0000003"]


# ---- one run per output_dir --------------------------------------------------------------------------------------
HOLD_LOCK = """
import sys, time
from qwenvl_data.training._output_lock import OutputDirLock
lock = OutputDirLock(sys.argv[1])
print("held", flush=True)
time.sleep(120)
"""


def test_a_second_run_on_a_busy_output_dir_is_refused_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        module, cls = _recipe()
        cfg = load_config("tiny_synthetic", {**RESUME, "output_dir": str(out)})
        last_line = refusal_line(capsys, lambda: module.run_recipe(cls, cfg))
    finally:
        holder.kill()
        holder.wait()
    assert re.fullmatch(rf"{OutputDirBusyError.__name__}: output_dir {re.escape(str(out))} is in use by the run with "
                        rf"pid {holder.pid} on host {re.escape(socket.gethostname())} .*", last_line), last_line  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # the refused run wrote nothing


def test_a_stale_lock_of_a_dead_process_is_taken_over_saying_so(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "then"}))
    lock = OutputDirLock(tmp_path)
    assert f"taking over the lock of run pid {dead.pid}" in capsys.readouterr().out
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": "another-host", "started": "then"}))
    with pytest.raises(OutputDirBusyError, match=rf"pid {dead.pid} on host another-host"):
        OutputDirLock(tmp_path)  # another host's process cannot be checked: never taken over


def test_an_unwritable_output_dir_is_found_before_anything_is_built(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a directory")
    module, cls = _recipe()
    built = []
    monkeypatch.setattr("qwenvl_data.training._recipe.build", lambda *args, **kwargs: built.append(args[1]))
    started = time.perf_counter()
    with pytest.raises(OSError, match=rf"output_dir {tmp_path / 'file' / 'out'} is not writable: Not a directory"):
        module.run_recipe(cls, load_config("tiny_synthetic", {**RESUME, "output_dir": str(tmp_path / "file" / "out")}))
    assert built == [] and time.perf_counter() - started < 5
