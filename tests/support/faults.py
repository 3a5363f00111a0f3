"""A model transform that fails one chosen sample the way a cluster fails: the process is killed, or a read
never returns. Used as `tokenizer._component_` by the failure tests (tests/ on PYTHONPATH)."""

import os
import signal
import time

from qwenvl_data.transform import Qwen2_5_VLTransform
from qwenvl_data.vocab import qwen_vocab_files


class FaultyTransform(Qwen2_5_VLTransform):
    """The packaged-vocabulary transform, except on ``sample_id``: write the wall time to ``marker``, then
    ``fault`` = "kill" (SIGKILL this process) or "stall" (block in a read of a pipe that never gets data, as on
    a hung file system)."""

    def __init__(self, *, fault: str, sample_id: str, marker: str, **transform_kwargs) -> None:
        super().__init__(*qwen_vocab_files(), **transform_kwargs)
        self.fault, self.sample_id, self.marker = fault, sample_id, marker

    def __call__(self, sample, inference=False):
        if sample.get("id") == self.sample_id:
            with open(self.marker, "w") as f:
                f.write(repr(time.time()))
            if self.fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            read_end, _write_end = os.pipe()
            os.read(read_end, 1)  # never returns: the write end stays open and nothing is written
        return super().__call__(sample, inference)
