"""A process's progress is the CPU its threads and children use: standing still when they wait."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

from facefusion_tasks.progress import cpu_ticks


def test_a_working_child_moves_the_count_and_a_stopped_one_does_not() -> None:
    # The reading thread left out, as the heartbeat leaves itself out: its reads are not work.
    me = [threading.get_native_id()]
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        before = cpu_ticks(excluding=me)
        time.sleep(0.5)
        working = cpu_ticks(excluding=me)
        assert before is not None and working is not None and working > before
        spin.send_signal(signal.SIGSTOP)
        time.sleep(0.1)
        stopped = cpu_ticks(excluding=me)
        time.sleep(0.5)
        # Still (a few ticks at most, from whatever else this test process runs), where the
        # child working for as long moved it by about 50.
        assert (cpu_ticks(excluding=me) or 0) - (stopped or 0) <= 5
    finally:
        spin.kill()
        spin.wait()
    # Reaped, its time is this process's: the count does not fall back.
    assert (cpu_ticks() or 0) >= (stopped or 0)


def test_a_thread_left_out_is_not_counted() -> None:
    done = threading.Event()
    native: list[int] = []

    def busy() -> None:
        native.append(threading.get_native_id())
        while not done.is_set():
            pass

    thread = threading.Thread(target=busy, daemon=True)
    thread.start()
    try:
        while not native:
            time.sleep(0.01)
        me = threading.get_native_id()
        counted = cpu_ticks(excluding=[me])
        left_out = cpu_ticks(excluding=[*native, me])
        time.sleep(0.4)
        assert (cpu_ticks(excluding=[me]) or 0) > (counted or 0)
        # This thread sleeps, the busy one is left out: nothing moves (give or take a tick or
        # two of whatever else this test process runs; the busy thread made about 40).
        assert (cpu_ticks(excluding=[*native, me]) or 0) - (left_out or 0) <= 5
    finally:
        done.set()
        thread.join()
