"""A rank that dies or stalls ends the whole 2-rank job within a bounded time, and the output names it."""

import os
import subprocess
import sys
import time

from support.recipes_support import REPO, TINY_OVERRIDES, as_cli

# Without shuffling rank 1 reads the odd records: synthetic-0-5 is its third, in step 2 of 3 (batch 2).
FAULTY_SAMPLE = "synthetic-0-5"
DATA_TIMEOUT_S = 5
# Seconds torchrun takes to end the job once a rank is gone: about 4 on 2 idle-ish CPU cores, 13 on a loaded
# machine; the bound only has to tell a bounded teardown from a hang (the 600 s collective timeout).
TEARDOWN_S = 60


def _run_with_fault(tmp_path, fault: str) -> tuple[subprocess.CompletedProcess, float]:
    """(the finished job, seconds from the fault until every process of the job was gone)."""
    marker = tmp_path / "fault_time"
    overrides = {
        **TINY_OVERRIDES, "output_dir": str(tmp_path / "out"), "batch_size": 2, "max_steps_per_epoch": 3,
        "shuffle": False, "eval_dataset.num_samples": 2, "data_timeout_s": DATA_TIMEOUT_S,
        "tokenizer._component_": "support.faults.FaultyTransform", "tokenizer.fault": fault,
        "tokenizer.sample_id": FAULTY_SAMPLE, "tokenizer.marker": str(marker),
    }  # fmt: skip
    command = [sys.executable, "-m", "torchtune._cli.tune", "run", "--nproc_per_node", "2",
               "recipes/full_finetune_distributed.py", "--config", "configs/tiny_synthetic.yaml",
               *as_cli(overrides)]  # fmt: skip
    python_path = [str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]  # FaultyTransform is in tests/
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(python_path)}
    # Far below the 600 s a collective waits by default: a job that hangs fails here instead.
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    ended = time.time()
    assert marker.is_file(), f"the fault never happened:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result, ended - float(marker.read_text())


def test_a_killed_rank_ends_the_job_within_seconds_naming_it(tmp_path):
    result, seconds = _run_with_fault(tmp_path, "kill")
    assert result.returncode != 0
    assert "local_rank: 1" in result.stderr and "SIGKILL" in result.stderr, result.stderr[-3000:]
    assert seconds < TEARDOWN_S, f"the job took {seconds:.1f} s to end after rank 1 was killed"
    print(f"killed rank: job gone {seconds:.1f} s after the kill")


def test_a_rank_stuck_in_a_read_ends_the_job_after_data_timeout_naming_it_and_the_record(tmp_path):
    result, seconds = _run_with_fault(tmp_path, "stall")
    assert result.returncode != 0
    message = f"rank 1 of 2: reading the next batch has not returned after {DATA_TIMEOUT_S} s (data_timeout_s)"
    assert message in result.stderr, result.stderr[-3000:]
    assert f"the record it started reading last: sample 5 ({FAULTY_SAMPLE})" in result.stderr
    assert "faults.py\", line" in result.stderr  # where its thread is stuck (faulthandler)
    assert "local_rank: 1" in result.stderr  # torchrun's summary names the failed rank too
    assert DATA_TIMEOUT_S <= seconds < DATA_TIMEOUT_S + TEARDOWN_S, f"the job ended {seconds:.1f} s after the stall"
    print(f"stuck rank: job gone {seconds:.1f} s after the read began (data_timeout_s={DATA_TIMEOUT_S})")
