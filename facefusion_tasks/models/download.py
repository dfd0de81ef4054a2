"""Fetch the model files with streamed sha256 checks; nothing unverified reaches its final name."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from tqdm import tqdm

from facefusion_tasks.errors import DownloadError
from facefusion_tasks.models.digests import (
    CHUNK_BYTES,
    GOOD_STATUSES,
    UNRECORDED,
    expected_digest,
    file_status,
    forget_trusted,
    mismatch_message,
    record_digest,
    recorded_digests,
    temp_file,
    trusted_digests,
    trusted_model_path,
)
from facefusion_tasks.models.registry import MODELS, ModelSpec

log = logging.getLogger(__name__)

#: Seconds a socket may stay silent (connect or read) before the download is abandoned.
SOCKET_TIMEOUT_S = 30.0


def download_models(
    models_dir: Path,
    *,
    specs: Sequence[ModelSpec] = MODELS,
    mirror: str | None = None,
    progress: bool = True,
    force: bool = False,
    timeout: float = SOCKET_TIMEOUT_S,
) -> list[Path]:
    """Make every model in `specs` present and verified in `models_dir`; return their paths.

    Present files with a good digest are skipped (no network) unless `force`. Files that share
    a zip are extracted from one download of it. Raises DownloadError with one line on any
    network or digest failure; the final filenames only ever hold verified bytes.
    """
    models_dir.mkdir(parents=True, exist_ok=True)
    recorded, trusted = recorded_digests(models_dir), trusted_digests(models_dir)
    pending: dict[str, list[ModelSpec]] = {}
    for spec in specs:
        path = models_dir / spec.filename
        if not force and path.is_file():
            status = file_status(path, spec, recorded, trusted)
            if status in GOOD_STATUSES:
                log.info("%s: present, %s", spec.filename, status)
                continue
            if status == UNRECORDED:
                # Placed by hand: this is its first use, so trust it as a download would be.
                trusted_model_path(models_dir, spec)
                recorded = recorded_digests(models_dir)
                continue
            log.warning("%s: present but %s; downloading again", spec.filename, status)
        pending.setdefault(spec.source_url(mirror), []).append(spec)

    for url, group in pending.items():
        archived = [spec for spec in group if spec.archive_member is not None]
        for spec in group:
            if spec.archive_member is None:
                with _fetch(url, models_dir, spec.remote_name, timeout, progress) as (tmp, got):
                    _check(spec, models_dir, recorded, got)
                    _install(tmp, spec, models_dir, recorded, got)
        if archived:
            zip_name, pinned = archived[0].remote_name, archived[0].archive_sha256
            with _fetch(url, models_dir, zip_name, timeout, progress) as (archive, got):
                if pinned is not None and got != pinned:
                    raise DownloadError(
                        f"{zip_name}: sha256 mismatch (expected {pinned}, got {got})"
                    )
                _extract(archive, archived, models_dir, recorded)
    return [models_dir / spec.filename for spec in specs]


def _check(spec: ModelSpec, models_dir: Path, recorded: dict[str, str], got: str) -> None:
    """Refuse bytes that differ from the pin, or from the digest recorded at first download.
    A download fetches the published file: what `models trust` recorded is not its measure."""
    expected, origin = expected_digest(spec, recorded, trusted={})
    if expected is not None and got != expected:
        raise DownloadError(mismatch_message(spec, models_dir, expected, got, origin=origin))


def _install(
    tmp: Path, spec: ModelSpec, models_dir: Path, recorded: dict[str, str], digest: str
) -> None:
    """Move verified bytes into place, recording the digest first if the file is unpinned; the
    published file replaces one trusted on purpose, so that trust is withdrawn."""
    if spec.sha256 is None and spec.filename not in recorded:
        record_digest(models_dir, spec.filename, digest)
        recorded[spec.filename] = digest
        log.warning("%s: unpinned, recorded sha256 %s (trust on first use)", spec.filename, digest)
    os.replace(tmp, models_dir / spec.filename)
    forget_trusted(models_dir, spec.filename)
    log.info("%s: downloaded, sha256 %s", spec.filename, digest)


def _extract(
    archive: Path, specs: list[ModelSpec], models_dir: Path, recorded: dict[str, str]
) -> None:
    """Stream each wanted member to a temp file, hashing it; never extract anything else."""
    name = specs[0].remote_name
    try:
        with zipfile.ZipFile(archive) as zf:
            for spec in specs:
                member = _find_member(zf, str(spec.archive_member), name)
                with zf.open(member) as source:
                    _copy_verified(source, spec, models_dir, recorded)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{name}: not a valid zip archive ({exc})") from None


def _copy_verified(
    source: IO[bytes], spec: ModelSpec, models_dir: Path, recorded: dict[str, str]
) -> None:
    with temp_file(models_dir, spec.filename) as (tmp, out):
        digest = hashlib.sha256()
        while chunk := source.read(CHUNK_BYTES):
            digest.update(chunk)
            out.write(chunk)
        out.close()
        _check(spec, models_dir, recorded, digest.hexdigest())
        _install(tmp, spec, models_dir, recorded, digest.hexdigest())


def _find_member(zf: zipfile.ZipFile, wanted: str, archive_name: str) -> str:
    names = zf.namelist()
    if wanted in names:
        return wanted
    # Some insightface packs nest their files in a folder (antelopev2/...): accept a unique
    # member with the same basename rather than failing on the layout.
    matches = [n for n in names if n.rsplit("/", 1)[-1] == wanted]
    if len(matches) == 1:
        return matches[0]
    raise DownloadError(f"{archive_name}: no member {wanted!r} (has {', '.join(names)})")


@contextlib.contextmanager
def _fetch(
    url: str, directory: Path, name: str, timeout: float, progress: bool
) -> Iterator[tuple[Path, str]]:
    """Download `url` to a temp file in `directory`, hashing as it streams; yield (path, sha256).

    The temp file is deleted when the block exits, whether or not it was moved into place.
    """
    request = urllib.request.Request(url, headers={"User-Agent": "facefusion-tasks"})
    with temp_file(directory, name) as (tmp, out):
        digest = hashlib.sha256()
        received = 0
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(
                    total=total,
                    desc=name,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    disable=not progress,
                    leave=False,
                ) as bar:
                    while chunk := response.read(CHUNK_BYTES):
                        digest.update(chunk)
                        out.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
        except urllib.error.HTTPError as exc:
            exc.close()
            raise DownloadError(f"{name}: HTTP {exc.code} {exc.reason} from {url}") from None
        except urllib.error.URLError as exc:
            raise DownloadError(f"{name}: cannot reach {url}: {exc.reason}") from None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # TimeoutError, reset connections and short reads land here.
            reason = str(exc) or type(exc).__name__
            raise DownloadError(f"{name}: download from {url} failed: {reason}") from None
        if total is not None and received != total:
            raise DownloadError(f"{name}: truncated download ({received} of {total} bytes)")
        out.close()
        yield tmp, digest.hexdigest()
