"""The digest each model file must have, and the models dir's record of digests (digests.json)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from facefusion_tasks.errors import ModelError
from facefusion_tasks.models.registry import MODELS, ModelSpec

log = logging.getLogger(__name__)

#: The models dir's digest record: `{filename: sha256}` recorded at the first download of an
#: unpinned file (trust on first use), and under TRUSTED_KEY the files trusted on purpose.
DIGESTS_FILE = "digests.json"
#: `{filename: {"sha256", "trusted_at", "source"}}` written by `models trust`. A key no model file
#: has, so a reader that knows only `{filename: sha256}` never takes it for one.
TRUSTED_KEY = "trusted"
#: Bytes read per chunk: big enough to keep syscalls cheap, small enough for a smooth bar.
CHUNK_BYTES = 1 << 20

#: verify_models statuses. The first three mean the file can be used.
OK = "ok"
RECORDED = "unpinned (recorded)"
TRUSTED = "trusted"
MISSING = "missing"
MISMATCH = "digest mismatch"
UNRECORDED = "unpinned (not recorded)"
GOOD_STATUSES = frozenset({OK, RECORDED, TRUSTED})


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks (the models are hundreds of MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _record(models_dir: Path) -> dict[str, Any]:
    """digests.json as stored ({} when there is none)."""
    path = models_dir / DIGESTS_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        # A damaged record must not silently reset trust: refuse until someone looks at it.
        raise ModelError(f"{path} is unreadable: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get(TRUSTED_KEY, {}), dict):
        raise ModelError(f"{path} is not a JSON object of digests")
    return data


def recorded_digests(models_dir: Path) -> dict[str, str]:
    """filename → sha256 recorded on first download of each unpinned file."""
    return {
        str(name): str(value)
        for name, value in _record(models_dir).items()
        if name != TRUSTED_KEY and isinstance(value, str)
    }


def trusted_digests(models_dir: Path) -> dict[str, str]:
    """filename → sha256 of the files trusted on purpose (`models trust`)."""
    trusted = _record(models_dir).get(TRUSTED_KEY, {})
    found = {}
    for name, entry in trusted.items():
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(digest, str):
            raise ModelError(f"{models_dir / DIGESTS_FILE}: trusted entry {name!r} has no sha256")
        found[str(name)] = digest
    return found


def expected_digest(
    spec: ModelSpec, recorded: dict[str, str], trusted: dict[str, str]
) -> tuple[str | None, str]:
    """(the sha256 the file must have, where that comes from: trusted | pinned | recorded), or
    (None, "") for an unpinned file never recorded. A file trusted on purpose overrides the
    pin: the user chose those bytes, after their contract was checked."""
    if spec.filename in trusted:
        return trusted[spec.filename], "trusted"
    if spec.sha256:
        return spec.sha256, "pinned"
    if spec.filename in recorded:
        return recorded[spec.filename], "recorded"
    return None, ""


def verify_models(models_dir: Path, *, specs: Sequence[ModelSpec] = MODELS) -> dict[str, str]:
    """filename → ok | unpinned (recorded) | trusted | missing | digest mismatch |
    unpinned (not recorded).

    Read-only: an unpinned file that was never recorded (copied in by hand) is reported, not
    trusted; `trusted_model_path` records it at first load.
    """
    recorded, trusted = recorded_digests(models_dir), trusted_digests(models_dir)
    return {
        spec.filename: file_status(models_dir / spec.filename, spec, recorded, trusted)
        for spec in specs
    }


def file_status(
    path: Path, spec: ModelSpec, recorded: dict[str, str], trusted: dict[str, str]
) -> str:
    """One file's verify_models status."""
    if not path.is_file():
        return MISSING
    expected, origin = expected_digest(spec, recorded, trusted)
    if expected is None:
        return UNRECORDED
    if sha256_file(path) != expected:
        return MISMATCH
    return {"trusted": TRUSTED, "pinned": OK}.get(origin, RECORDED)


def trusted_model_path(models_dir: Path, spec: ModelSpec) -> Path:
    """The path of a model about to be loaded, after checking its digest.

    Raises ModelError when the file is missing or does not match its trusted, pinned or
    recorded digest. An unpinned, unrecorded file is trusted now and its digest recorded.
    """
    path = models_dir / spec.filename
    if not path.is_file():
        raise ModelError(f"{path} is missing; run `facefusion-tasks models download`")
    actual = sha256_file(path)
    expected, origin = expected_digest(
        spec, recorded_digests(models_dir), trusted_digests(models_dir)
    )
    if expected is None:
        log.warning("%s is unpinned: trusting it on first use (sha256 %s)", path, actual)
        record_digest(models_dir, spec.filename, actual)
    elif actual != expected:
        message = mismatch_message(spec, models_dir, expected, actual, origin=origin)
        raise ModelError(
            f"{message}; if you replaced it on purpose, check and trust it: "
            f"facefusion-tasks models trust {path}"
        )
    return path


def mismatch_message(
    spec: ModelSpec, models_dir: Path, expected: str, got: str, *, origin: str
) -> str:
    """One line: which file, what it should hash to and why, what it hashes to."""
    message = f"{spec.filename}: sha256 mismatch (expected {expected}, got {got})"
    if origin == "trusted":
        message += f"; it changed since `models trust` recorded it in {models_dir / DIGESTS_FILE}"
    elif origin == "recorded":
        # Upstream may have republished the file on purpose (FaceFusion did): say how to re-trust.
        message += f"; recorded at first download in {models_dir / DIGESTS_FILE}"
        message += ", delete that entry to trust the new file"
    return message


def record_digest(models_dir: Path, filename: str, digest: str) -> None:
    """Record an unpinned file's digest at its first download or use."""
    with _editing(models_dir) as data:
        data[filename] = digest


def record_trusted(models_dir: Path, filename: str, digest: str, *, source: Path) -> None:
    """Record a file as trusted on purpose: from now on it must have exactly this digest."""
    with _editing(models_dir) as data:
        data.setdefault(TRUSTED_KEY, {})[filename] = {
            "sha256": digest,
            "trusted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": str(source),
        }


def forget_trusted(models_dir: Path, filename: str) -> None:
    """Drop a file's trusted entry (a download put the published file back in its place)."""
    if filename not in trusted_digests(models_dir):
        return
    with _editing(models_dir) as data:
        trusted = data.get(TRUSTED_KEY, {})
        trusted.pop(filename, None)
        if not trusted:
            data.pop(TRUSTED_KEY, None)


@contextlib.contextmanager
def _editing(models_dir: Path) -> Iterator[dict[str, Any]]:
    """Change digests.json under a lock (workers share the dir) and replace it atomically."""
    with _locked(models_dir / f".{DIGESTS_FILE}.lock"):
        data = _record(models_dir)
        yield data
        with temp_file(models_dir, DIGESTS_FILE) as (tmp, out):
            out.write((json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
            out.close()
            os.replace(tmp, models_dir / DIGESTS_FILE)


@contextlib.contextmanager
def temp_file(directory: Path, name: str) -> Iterator[tuple[Path, IO[bytes]]]:
    """A hidden temp file next to the target (same filesystem, so os.replace is atomic),
    removed on any failure, including Cancelled and KeyboardInterrupt."""
    fd, raw = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".part")
    tmp = Path(raw)
    try:
        with os.fdopen(fd, "wb") as out:
            yield tmp, out
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; concurrent first downloads are rare there.
        yield
        return
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
