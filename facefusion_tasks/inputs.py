"""Cheap checks of user inputs, run before any work is queued or any model loads."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from facefusion_tasks.errors import InputError, OutputError
from facefusion_tasks.reasons import Reason

#: Output containers we can mux video (and usually the source audio) into.
OUTPUT_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".m4v"})


def read_image(path: Path) -> np.ndarray:
    """Load a still image as BGR or raise InputError with one line."""
    import cv2

    if not path.is_file():
        raise InputError(f"{path}: no such file", reason=Reason.MISSING_FILE)
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"{path}: not an image opencv can read", reason=Reason.NOT_AN_IMAGE)
    return image


def check_output(output: Path, target: Path, *, inputs: Sequence[Path | None] = ()) -> None:
    """Refuse destinations we could only fail on later, before any work starts; `inputs` (the
    source and reference images) must not be overwritten either."""
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        allowed = ", ".join(sorted(OUTPUT_SUFFIXES))
        raise OutputError(f"{output}: unsupported output type (use {allowed})")
    if output.resolve() == target.resolve():
        raise OutputError(f"{output}: output would overwrite the target video")
    for other in inputs:
        if other is not None and output.resolve() == Path(other).resolve():
            raise OutputError(f"{output}: output would overwrite an input image")
    if output.is_dir():
        raise OutputError(f"{output}: is a directory")
    parent = output.parent
    if not parent.is_dir():
        raise OutputError(f"{output}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{output}: directory {parent} is not writable")
