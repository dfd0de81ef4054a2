"""Model files as users bring them: re-exported copies of the stand-ins, and broken ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx


def reexport(source: Path, destination: Path) -> Path:
    """`source` loaded and saved again by another tool, as a re-published or re-saved model
    is: the same graph and contract, other bytes (so another sha256), and no stand-in mark."""
    model = onnx.load(str(source))
    model.producer_name = "re-exported"
    model.doc_string = f"re-saved from {source.name}"
    destination.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(destination))
    return destination


def reexport_all(models: Path, destination: Path) -> Path:
    """Every model of `models` re-exported into `destination` under the same names."""
    for path in sorted(models.glob("*.onnx")):
        reexport(path, destination / path.name)
    return destination


def without_emap(swapper: Path, destination: Path) -> Path:
    """The swapper with its emap (the graph's last initializer, used by no node) dropped."""
    model = onnx.load(str(swapper))
    del model.graph.initializer[-1]
    destination.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(destination))
    return destination


def renamed_copy(source: Path, destination: Path) -> Path:
    """The same bytes under another name (a detector offered as the swapper, say)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, destination)
    return destination
