"""An input replaced or rewritten after its job was planned is found, by name and reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from facefusion_tasks.errors import InputError
from facefusion_tasks.fingerprints import check_unchanged, fingerprint, fingerprints
from facefusion_tasks.reasons import Reason


def test_a_file_keeps_its_fingerprint_until_it_is_replaced_or_rewritten(tmp_path: Path) -> None:
    target = tmp_path / "t.mp4"
    target.write_bytes(b"planned video")
    planned = fingerprint(target)
    assert fingerprint(target) == planned
    os.utime(target)  # touched: same bytes, but nothing says so cheaply
    touched = fingerprint(target)
    assert touched != planned
    other = tmp_path / "other.mp4"
    other.write_bytes(b"planned video")  # same size, same bytes
    os.utime(other, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns))
    other.replace(target)  # renamed over it, as an encoder writing the same name does
    assert fingerprint(target) != touched  # another inode


def test_check_names_the_changed_input_and_ignores_jobs_without_fingerprints(
    tmp_path: Path,
) -> None:
    target, source = tmp_path / "t.mp4", tmp_path / "s.png"
    target.write_bytes(b"video")
    source.write_bytes(b"image")
    recorded = fingerprints([target, source])
    check_unchanged(recorded, [target, source])
    check_unchanged("", [target, source])  # planned before fingerprints existed
    source.write_bytes(b"another image")
    with pytest.raises(InputError, match=f"{source} changed after the job was planned") as caught:
        check_unchanged(recorded, [target, source])
    assert caught.value.reason is Reason.INPUT_CHANGED and caught.value.reason.user_input
    check_unchanged(recorded, [target])  # only what is asked about is checked
    target.unlink()
    with pytest.raises(InputError) as gone:
        check_unchanged(recorded, [target])
    assert gone.value.reason is Reason.MISSING_FILE
