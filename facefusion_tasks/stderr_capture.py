"""What C libraries print on the process's stderr during one call, caught instead of shown."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterator

#: Bytes of a call's output kept (libjpeg prints a line per warning; a hostile file may make
#: thousands).
_KEEP_BYTES = 64 * 1024
#: One capture at a time: the redirect is of the whole process's file descriptor 2.
_LOCK = threading.Lock()


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Point file descriptor 2 at a temp file for the body; the yielded list then holds the
    lines written there (libjpeg's and libpng's warnings bypass Python and OpenCV's log level).
    Another thread's output in that window is caught too: hand back what is not yours with
    `release`."""
    lines: list[str] = []
    with _LOCK, tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(sink.fileno(), 2)
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read(_KEEP_BYTES).decode(errors="replace").splitlines())


def release(lines: list[str]) -> None:
    """Write lines caught by captured_stderr() to stderr after all (someone else's output)."""
    if lines:
        sys.stderr.write("".join(f"{line}\n" for line in lines))
        sys.stderr.flush()
