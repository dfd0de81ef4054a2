"""Keep freed frame-sized buffers in the process heap instead of handing them back to the kernel."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading

log = logging.getLogger(__name__)

# mallopt(3) parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: Blocks up to this size come from the heap, not from a fresh mmap. glibc's default (128 KiB,
#: raised only to the largest block freed so far) sends every frame-sized temporary (a 4.9 MB
#: detector input, a 6 MB 1080p frame, a ~1 MB paste region) to mmap: each one is page-faulted
#: and zeroed by the kernel again, frame after frame. Measured on a 262 px paste-back at 720p:
#: 1.9 ms, of which 1.1 ms were those faults. 64 MiB covers a 4K frame; an 8K one still maps.
MMAP_THRESHOLD = 64 << 20
#: Free memory the heap may keep at its top before glibc returns it. About the frame queues'
#: budget (queue_bytes): the RSS stays near its high-water mark instead of dipping between
#: frames, and the peak itself does not move (bench --memory measures it).
TRIM_THRESHOLD = 256 << 20

_lock = threading.Lock()
_applied: bool | None = None


def keep_freed_buffers() -> bool:
    """Tune glibc's allocator once per process (fork children inherit it); False where the C
    library is not glibc or refuses, which only costs speed, or where the operator already
    set these thresholds (MALLOC_*_THRESHOLD_, glibc.malloc tunables): their choice wins."""
    global _applied
    with _lock:
        if _applied is None:
            _applied = not _operator_tuned() and _mallopt()
        return _applied


#: The operator's own say over the same thresholds: glibc's environment variables and tunables.
_THRESHOLD_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
_THRESHOLD_TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold")


def _operator_tuned() -> bool:
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return any(name in os.environ for name in _THRESHOLD_VARIABLES) or any(
        name in tunables for name in _THRESHOLD_TUNABLES
    )


def _mallopt() -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        # Only glibc has these mallopt numbers; musl and macOS have no gnu_get_libc_version.
        if not hasattr(libc, "gnu_get_libc_version"):
            raise AttributeError("not glibc")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.debug("not glibc: allocator left as it is")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    if not done:
        log.warning("glibc refused the allocator thresholds; frame buffers stay mmap-backed")
    return done
