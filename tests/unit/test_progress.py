"""A process's progress is the CPU its threads and children use: standing still when they wait."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from facefusion_tasks.progress import WorkMeter


def _busy(seconds: float) -> Callable[[], None]:
    def spin() -> None:
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    return spin


def test_a_working_child_moves_the_count_and_a_stopped_one_does_not() -> None:
    # The reading thread left out, as the heartbeat leaves itself out: its reads are not work.
    meter = WorkMeter(excluding=[threading.get_native_id()])
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        before = meter.read()
        time.sleep(0.5)
        working = meter.read()
        assert before is not None and working is not None and working > before
        spin.send_signal(signal.SIGSTOP)
        time.sleep(0.1)
        stopped = meter.read() or 0
        time.sleep(0.5)
        # Still (a few ticks at most, from whatever else this test process runs), where the
        # child working for as long moved it by about 50.
        assert (meter.read() or 0) - stopped <= 5
    finally:
        spin.kill()
        spin.wait()
    # Reaped, its time is this process's: the count does not fall back.
    assert (meter.read() or 0) >= stopped


def test_threads_left_out_are_not_counted_and_ended_ones_keep_their_ticks() -> None:
    done = threading.Event()
    native: list[int] = []

    def beside() -> None:  # a worker's own heartbeat, busy whatever the work does
        native.append(threading.get_native_id())
        while not done.is_set():
            _busy(0.02)()
            time.sleep(0.01)

    thread = threading.Thread(target=beside, daemon=True)
    thread.start()
    try:
        while not native:
            time.sleep(0.01)
        meter = WorkMeter(excluding=[*native, threading.get_native_id()])
        left_out = meter.read() or 0
        time.sleep(0.4)
        assert (meter.read() or 0) - left_out <= 5  # the busy thread made about 25
        # A thread the work starts counts, and keeps its ticks once it has ended (the kernel
        # drops a thread's own count with it: an upload's transfer threads went unseen).
        before = meter.read() or 0
        worker = threading.Thread(target=lambda: (time.sleep(0.05), _busy(0.3)()))
        worker.start()
        time.sleep(0.25)
        seen = meter.read() or 0  # while it works: about 20 ticks on
        worker.join()
        assert seen - before >= 5 and (meter.read() or 0) >= seen
    finally:
        done.set()
        thread.join()
