"""Frame-sized temporaries are reused from the heap, not page-faulted in again each frame."""

from __future__ import annotations

import os
import subprocess
import sys

# A paste-back's worth of temporaries (a few 1.6 MB float buffers) made and dropped again and
# again; prints the minor page faults of the second half, after any warm-up.
_CHURN = """
import resource, sys
import numpy as np
from facefusion_tasks import heap
print(heap.keep_freed_buffers() if sys.argv[1] == "tuned" else "-", flush=True)
def churn():
    for _ in range(50):
        buffers = [np.ones(400_000, np.float32) for _ in range(4)]
        del buffers
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str, **env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    clean.pop("GLIBC_TUNABLES", None)
    out = subprocess.run(
        [sys.executable, "-c", _CHURN, mode],
        env={**clean, **env}, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    applied, faults = out.stdout.split()
    return applied, int(faults)


def test_tuned_heap_reuses_freed_frame_buffers_instead_of_faulting_them_in() -> None:
    applied, tuned = _faults("tuned")
    _, default = _faults("default")
    assert applied == "True"
    # glibc's defaults hand the buffers back and fault ~400 pages per buffer in again.
    assert default > 50 * 4 * 100
    assert tuned < default / 20


def test_an_operators_own_malloc_settings_win() -> None:
    applied, _ = _faults("tuned", GLIBC_TUNABLES="glibc.malloc.trim_threshold=1048576")
    assert applied == "False"
    applied, _ = _faults("tuned", MALLOC_MMAP_THRESHOLD_="131072")
    assert applied == "False"
    applied, _ = _faults("tuned", MALLOC_ARENA_MAX="2")  # another knob: ours still apply
    assert applied == "True"
