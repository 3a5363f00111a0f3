"""Training states record the arithmetic settings; a resume under other ones says it will not be bit-identical."""

import torch

from qwenvl_data.training._numerics import numerics_settings, resume_numerics_note


def test_a_resume_with_the_saved_settings_says_nothing_and_other_threads_or_kernels_are_named(monkeypatch):
    monkeypatch.delenv("MKL_CBWR", raising=False)
    saved = numerics_settings(torch.device("cpu"))
    assert saved["torch_threads"] == torch.get_num_threads()
    assert saved["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert resume_numerics_note(saved, numerics_settings(torch.device("cpu"))) is None
    assert resume_numerics_note(None, saved) is None  # a state saved before settings were recorded

    monkeypatch.setenv("MKL_CBWR", "AVX2")
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        note = resume_numerics_note(saved, numerics_settings(torch.device("cpu")))
    finally:
        torch.set_num_threads(threads)
    assert f"torch_threads {threads} -> {threads + 1}" in note
    assert "MKL_CBWR '' -> 'AVX2'" in note
    assert "not be bit-identical" in note
