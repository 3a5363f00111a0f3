"""What the last bits of a float32 training step depend on besides the data and the weights.

A resumed run is bit-identical to an uninterrupted one only when both run the same arithmetic:
float sums are split by thread count (ATen's parallel reductions; MKL's sgemm on Intel CPUs, even
under ``MKL_CBWR=AVX2``) and by the CPU kernels chosen at start (``ATEN_CPU_CAPABILITY``, MKL's code
path, which ``MKL_CBWR`` pins). Each saved training state records these settings, and a resume
under other ones says so (it continues: the result is as good, only not the same bits).
"""

import os

import torch

_ENVIRONMENT = ("MKL_CBWR", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")


def numerics_settings(device: torch.device) -> dict[str, str | int]:
    """This process's arithmetic settings, as saved in a training state.

    Returns:
        {"device": cuda device name or "cpu", "torch_threads": intra-op threads,
         "cpu_capability": the ATen kernels in use ("AVX512", "AVX2", "DEFAULT"), and each of
         MKL_CBWR / ATEN_CPU_CAPABILITY / MKL_ENABLE_INSTRUCTIONS as set ("" when unset)}
    """
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    settings: dict[str, str | int] = {
        "device": name,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    settings.update({key: os.environ.get(key, "") for key in _ENVIRONMENT})
    return settings


def resume_numerics_note(saved: dict[str, str | int] | None, current: dict[str, str | int]) -> str | None:
    """A note when a resume runs on other arithmetic settings than the run that saved the state, else None.

    Args:
        saved: ``numerics_settings`` stored with the state (None: a state from before they were stored).
        current: this process's ``numerics_settings``.
    """
    if saved is None:
        return None
    changed = [f"{key} {saved.get(key)!r} -> {value!r}" for key, value in current.items() if saved.get(key) != value]
    if not changed:
        return None
    return (
        f"note: resuming with other arithmetic settings than the saved run ({'; '.join(changed)}): training "
        f"continues exactly from the saved state, but the float rounding of later steps differs, so the weights "
        f"will not be bit-identical to an uninterrupted run's (README \"Resume\": same threads, same kernels)"
    )
