"""Loaded by every Python process started with tests/faults on PYTHONPATH (worker processes in
fault-injection tests); does nothing unless FF_FAULT_OOM is set."""

import os

if os.environ.get("FF_FAULT_OOM"):
    from tests.faults.oom import install_from_env

    install_from_env()
