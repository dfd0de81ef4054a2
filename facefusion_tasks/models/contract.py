"""The I/O contract each model role must honour: what `models trust` checks before it trusts a file."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import onnx

from facefusion_tasks.models.standin import (
    DETECTOR_FILE,
    DETECTOR_OUTPUTS,
    EMBEDDER_FILE,
    SWAPPER_FILE,
)

#: onnxruntime's name for the only element type the pipeline feeds and reads.
FLOAT = "tensor(float)"
#: inswapper's identity projection: the graph's last initializer, 512×512.
EMAP_SHAPE = (512, 512)


@dataclass(frozen=True)
class Tensor:
    """One model input or output as onnxruntime reports it."""

    name: str
    #: A fixed size, or None for a free (named or unknown) dimension.
    shape: tuple[int | None, ...]
    #: onnxruntime's type string, e.g. "tensor(float)".
    type: str = FLOAT


@dataclass(frozen=True)
class Wanted:
    """What one input or output of a role must be."""

    name: str
    #: The trailing dimensions: a size, or None for any. A free dimension in the file passes
    #: (onnxruntime checks it at run time); a fixed one must be this size.
    dims: tuple[int | None, ...]
    #: Ranks allowed (SCRFD outputs are [anchors, C], or [N, anchors, C] from a batched export).
    ranks: tuple[int, ...] = ()

    def problem(self, got: Tensor, where: str) -> str | None:
        """What is wrong with `got` in this place, or None."""
        if got.name != self.name:
            return f"{where} is named {got.name!r}, expected {self.name!r}"
        if got.type != FLOAT:
            return f"{where} {got.name!r} is {got.type}; the pipeline feeds and reads float32"
        ranks = self.ranks or (len(self.dims),)
        tail = got.shape[len(got.shape) - len(self.dims) :]
        fits = all(w is None or g is None or g == w for g, w in zip(tail, self.dims, strict=True))
        if len(got.shape) not in ranks or not fits:
            return f"{where} {got.name!r} has shape {_show(got.shape)}, expected {self._shape()}"
        return None

    def _shape(self) -> str:
        lead = max(self.ranks or (len(self.dims),)) - len(self.dims)
        return _show((None,) * lead + self.dims)


@dataclass(frozen=True)
class Role:
    """A model's part in the pipeline and the contract that part needs."""

    #: detector | embedder | swapper (the registry's keys).
    key: str
    filename: str
    inputs: tuple[Wanted, ...]
    outputs: tuple[Wanted, ...]
    #: The swapper reads its emap from the graph (insightface's INSwapper does the same).
    needs_emap: bool = False


def _scrfd_output(index: int, name: str) -> Wanted:
    return Wanted(name, (None, (1, 4, 10)[index // 3]), ranks=(2, 3))


#: The three roles, with the names and shapes of insightface's exports.
ROLES: tuple[Role, ...] = (
    Role(
        "detector",
        DETECTOR_FILE,
        inputs=(Wanted("input.1", (None, 3, None, None)),),
        outputs=tuple(_scrfd_output(i, name) for i, name in enumerate(DETECTOR_OUTPUTS)),
    ),
    Role(
        "embedder",
        EMBEDDER_FILE,
        inputs=(Wanted("input.1", (None, 3, 112, 112)),),
        outputs=(Wanted("683", (None, 512)),),
    ),
    Role(
        "swapper",
        SWAPPER_FILE,
        inputs=(Wanted("target", (None, 3, 128, 128)), Wanted("source", (None, 512))),
        outputs=(Wanted("output", (None, 3, 128, 128)),),
        needs_emap=True,
    ),
)


def role_for(filename: str) -> Role | None:
    """The role a file plays, decided by its name as the registry names the files."""
    return next((role for role in ROLES if role.filename == filename), None)


def problems(
    role: Role, inputs: Sequence[Tensor], outputs: Sequence[Tensor], model: onnx.ModelProto
) -> list[str]:
    """Everything that keeps a model from playing `role` ([] = it fits): its inputs and outputs
    as onnxruntime opened them, and (from the graph) the emap and where its weights live."""
    found = []
    for kind, wanted, got in (("input", role.inputs, inputs), ("output", role.outputs, outputs)):
        if len(got) != len(wanted):
            names = ", ".join(w.name for w in wanted)
            plural = "" if len(got) == 1 else "s"
            found.append(
                f"{len(got)} {kind}{plural} where the {role.key} has {len(wanted)} ({names})"
            )
            continue
        for index, (want, tensor) in enumerate(zip(wanted, got, strict=True)):
            problem = want.problem(tensor, f"{kind} {index}")
            if problem:
                found.append(problem)
    graph = model.graph
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in graph.initializer):
        found.append("its weights are in external files, which this file's sha256 cannot cover")
    if role.needs_emap:
        last = graph.initializer[-1] if graph.initializer else None
        dtypes = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
        if last is None or tuple(last.dims) != EMAP_SHAPE or last.data_type not in dtypes:
            shown = "none" if last is None else f"{last.name!r} {_show(tuple(last.dims))}"
            found.append(
                f"no 512×512 emap as the graph's last initializer (found {shown}): the source "
                "identity is projected through it"
            )
    return found


def tensors(values: Sequence[Any]) -> list[Tensor]:
    """onnxruntime's NodeArgs (session.get_inputs() or get_outputs()) as Tensors."""
    return [
        Tensor(str(v.name), tuple(d if isinstance(d, int) else None for d in v.shape), str(v.type))
        for v in values
    ]


def _show(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
