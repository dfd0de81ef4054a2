"""`models trust`: check a model file you bring against its role's contract, then trust its sha256."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from facefusion_tasks.errors import InputError
from facefusion_tasks.models.contract import ROLES, Role, problems, role_for, tensors
from facefusion_tasks.models.digests import DIGESTS_FILE, record_trusted, temp_file
from facefusion_tasks.reasons import Reason

#: The most one ONNX file can hold (a protobuf message); weights beyond it live in external
#: files, which a digest of the .onnx alone cannot cover.
MAX_MODEL_BYTES = 2**31


@dataclass(frozen=True)
class Trusted:
    """One file trusted on purpose: where it is now, its digest, where it came from."""

    role: Role
    path: Path
    sha256: str
    #: The file given, when it was copied into the models dir (None: it was already there).
    copied_from: Path | None

    def line(self) -> str:
        """What `models trust` says about it."""
        copied = f" (copied from {self.copied_from})" if self.copied_from else ""
        return (
            f"trusted {self.path.name} as the {self.role.key}{copied}: sha256 {self.sha256}, "
            f"recorded in {self.path.parent / DIGESTS_FILE}"
        )


def roles_of(files: Sequence[Path]) -> list[tuple[Path, Role]]:
    """Each file with the role its name gives it; InputError, before anything is read, for a
    name no role has, a missing file, or two files for one role."""
    names = ", ".join(f"{role.filename} ({role.key})" for role in ROLES)
    chosen: list[tuple[Path, Role]] = []
    for path in files:
        role = role_for(path.name)
        if role is None:
            raise InputError(
                f"{path}: its name says no role; name the file {names} (the name decides the "
                "part it plays)"
            )
        if not path.is_file():
            raise InputError(f"{path}: no such file", reason=Reason.MISSING_FILE)
        if any(other.filename == role.filename for _, other in chosen):
            raise InputError(f"{path}: two files given for {role.filename}")
        chosen.append((path, role))
    return chosen


@dataclass(frozen=True)
class Checked:
    """A file that fits its role's contract, and the digest of the bytes that were checked."""

    role: Role
    path: Path
    sha256: str


def trust_files(files: Sequence[Path], models_dir: Path) -> list[Trusted]:
    """Trust several files at once, all or none for what the user can fix: every file's name,
    size and contract is checked before any is installed or recorded."""
    checked = [check_file(path, role) for path, role in roles_of(files)]
    return [install(one, models_dir) for one in checked]


def trust_file(path: Path, role: Role, models_dir: Path) -> Trusted:
    """Check `path` against `role`'s contract, then install and record it (install)."""
    return install(check_file(path, role), models_dir)


def check_file(path: Path, role: Role) -> Checked:
    """`path` checked against `role`'s contract; InputError names every mismatch."""
    data = _read(path)
    found = _check(data, role, path)
    if found:
        raise InputError(f"{path}: refused as the {role.key} ({role.filename}): {'; '.join(found)}")
    return Checked(role, path, hashlib.sha256(data).hexdigest())


def install(checked: Checked, models_dir: Path) -> Trusted:
    """Record a checked file's sha256 as trusted in `models_dir`, copying it there under its
    role's file name when it is elsewhere. The bytes hashed and installed are read again in one
    go and must be the bytes that were checked (else InputError: the file changed meanwhile)."""
    path, role = checked.path, checked.role
    data = _read(path)
    digest = hashlib.sha256(data).hexdigest()
    if digest != checked.sha256:
        raise InputError(f"{path}: changed while it was being checked; run models trust again")
    models_dir.mkdir(parents=True, exist_ok=True)
    destination = models_dir / role.filename
    in_place = destination.exists() and destination.resolve() == path.resolve()
    if not in_place:
        with temp_file(models_dir, role.filename) as (tmp, out):
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
            out.close()
            os.replace(tmp, destination)
    record_trusted(models_dir, role.filename, digest, source=path.resolve())
    return Trusted(role, destination, digest, None if in_place else path)


def _read(path: Path) -> bytes:
    """The whole file; InputError for one larger than an ONNX file can be."""
    size = path.stat().st_size
    if size > MAX_MODEL_BYTES:
        raise InputError(
            f"{path}: {size} bytes, more than one ONNX file can hold (2 GiB)",
            reason=Reason.TOO_LARGE,
        )
    return path.read_bytes()


def _check(data: bytes, role: Role, path: Path) -> list[str]:
    """The contract's problems with these bytes ([] = they fit), as onnxruntime opens them."""
    import onnxruntime as ort

    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends: not an ONNX model
        raise InputError(f"{path}: not an ONNX model ({type(exc).__name__})") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3  # its warnings about unused initializers are noise here
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: onnxruntime cannot open it: {first}") from None
    return problems(role, tensors(session.get_inputs()), tensors(session.get_outputs()), model)
