"""bench/gpu_check.sh --smoke: the GPU check's every case runs on the CPU with the tiny model, so it cannot rot."""

import json
import os
import subprocess

import pytest
from support.recipes_support import REPO


@pytest.mark.timeout(900)
def test_gpu_check_smoke_runs_every_case_and_writes_the_report(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", "bench/gpu_check.sh", "--smoke", "--out", str(out)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=850)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    report = json.loads(out.read_text())
    for case in ("3b_full", "7b_lora", "3b_generate"):
        for side in ("ours", "transformers"):
            assert report[case][side]["tokens_per_s"] > 0, (case, side)
    assert report["3b_full"]["ours_compiled"]["tokens_per_s"] > 0
    for layout in ("packed", "padded"):
        assert report["3b_packed"][layout]["tokens_per_s"] > 0 and 0 <= report["3b_packed"][layout]["padding"] < 1
    assert report["3b_parity"]["relative_error"] < 2e-2  # bf16 logits of the same weights
    assert report["3b_fsdp2_tune_run"]["returncode"] == 0, report["3b_fsdp2_tune_run"]
    assert "HF checkpoint:" in report["3b_fsdp2_tune_run"]["last_line"]
    assert "ratio ours/transformers" in result.stdout and f"report: {out}" in result.stdout
