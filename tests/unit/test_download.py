"""Model downloads against a real local HTTP server: digests, zips, trust on first use, errors."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import re
import threading
import time
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from facefusion_tasks.errors import DownloadError, ModelError
from facefusion_tasks.models.digests import (
    DIGESTS_FILE,
    record_trusted,
    trusted_digests,
    trusted_model_path,
    verify_models,
)
from facefusion_tasks.models.download import download_models
from facefusion_tasks.models.registry import MIRROR_ENV, MODELS, ModelSpec, spec_for

SWAPPER = b"swapper weights " * 1000
DETECTOR = b"detector weights " * 500
EMBEDDER = b"embedder weights " * 700


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        if self.path.startswith("/slow/"):
            time.sleep(1.0)  # longer than the test's socket timeout
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output clean


class _Server(http.server.ThreadingHTTPServer):
    requests: list[str]

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that gave up (timeout test) is expected, not a failure


class Served:
    """A directory served over HTTP on 127.0.0.1, counting GET requests."""

    def __init__(self, root: Path, server: _Server) -> None:
        self.root = root
        self.server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"

    @property
    def requests(self) -> list[str]:
        return self.server.requests

    def put(self, name: str, data: bytes) -> str:
        (self.root / name).write_bytes(data)
        return f"{self.url}/{name}"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    root = tmp_path / "www"
    root.mkdir()
    server = _Server(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
    server.requests = []
    # A short poll keeps shutdown (and so each test's teardown) quick.
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield Served(root, server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    return tmp_path / "models"


def buffalo_zip(*, det: bytes = DETECTOR, rec: bytes = EMBEDDER) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("det_10g.onnx", det)
        zf.writestr("w600k_r50.onnx", rec)
        zf.writestr("genderage.onnx", b"not wanted")
    return buffer.getvalue()


def zip_specs(url: str, archive: bytes) -> tuple[ModelSpec, ...]:
    return (
        ModelSpec("detector", "det_10g.onnx", url, sha(DETECTOR), "det_10g.onnx", sha(archive)),
        ModelSpec("embedder", "w600k_r50.onnx", url, sha(EMBEDDER), "w600k_r50.onnx", sha(archive)),
    )


def leftovers(directory: Path) -> list[str]:
    """Temp files and zips: anything a finished download must not leave behind."""
    return sorted(
        p.name
        for p in directory.iterdir()
        if (p.name.startswith(".") and not p.name.endswith(".lock")) or p.suffix == ".zip"
    )


def test_a_pinned_plain_file_is_downloaded(served: Served, models_dir: Path) -> None:
    url = served.put("inswapper_128.onnx", SWAPPER)
    specs = (ModelSpec("swapper", "inswapper_128.onnx", url, sha(SWAPPER)),)

    paths = download_models(models_dir, specs=specs, progress=False)

    assert paths == [models_dir / "inswapper_128.onnx"]
    assert paths[0].read_bytes() == SWAPPER
    assert leftovers(models_dir) == []
    assert verify_models(models_dir, specs=specs) == {"inswapper_128.onnx": "ok"}


def test_zip_members_are_extracted_from_one_download(served: Served, models_dir: Path) -> None:
    archive = buffalo_zip()
    specs = zip_specs(served.put("buffalo_l.zip", archive), archive)

    paths = download_models(models_dir, specs=specs, progress=False)

    assert [p.read_bytes() for p in paths] == [DETECTOR, EMBEDDER]
    assert served.requests == ["/buffalo_l.zip"]
    assert not (models_dir / "genderage.onnx").exists()
    assert leftovers(models_dir) == []
    assert set(verify_models(models_dir, specs=specs).values()) == {"ok"}


def test_a_member_in_a_folder_is_found_by_its_name(served: Served, models_dir: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("buffalo_l/det_10g.onnx", DETECTOR)
    url = served.put("buffalo_l.zip", buffer.getvalue())
    specs = (ModelSpec("detector", "det_10g.onnx", url, sha(DETECTOR), "det_10g.onnx"),)

    [path] = download_models(models_dir, specs=specs, progress=False)

    assert path.read_bytes() == DETECTOR


def test_corrupted_bytes_are_refused_and_leave_nothing(served: Served, models_dir: Path) -> None:
    url = served.put("inswapper_128.onnx", SWAPPER[:-1] + b"!")
    specs = (ModelSpec("swapper", "inswapper_128.onnx", url, sha(SWAPPER)),)

    with pytest.raises(DownloadError, match=r"inswapper_128\.onnx: sha256 mismatch \(expected"):
        download_models(models_dir, specs=specs, progress=False)

    assert list(models_dir.iterdir()) == []


def test_a_zip_with_the_wrong_digest_is_not_opened(served: Served, models_dir: Path) -> None:
    good = buffalo_zip()
    specs = zip_specs(served.put("buffalo_l.zip", buffalo_zip(det=b"evil")), good)

    with pytest.raises(DownloadError, match=r"buffalo_l\.zip: sha256 mismatch"):
        download_models(models_dir, specs=specs, progress=False)

    assert list(models_dir.iterdir()) == []


def test_a_zip_member_with_the_wrong_digest_is_refused(served: Served, models_dir: Path) -> None:
    archive = buffalo_zip(rec=b"tampered embedder")
    url = served.put("buffalo_l.zip", archive)
    detector, embedder = zip_specs(url, archive)
    specs = (detector, embedder)

    with pytest.raises(DownloadError, match=r"w600k_r50\.onnx: sha256 mismatch"):
        download_models(models_dir, specs=specs, progress=False)

    assert not (models_dir / "w600k_r50.onnx").exists()
    assert leftovers(models_dir) == []


def test_unpinned_files_are_trusted_once_then_checked(served: Served, models_dir: Path) -> None:
    url = served.put("inswapper_128.onnx", SWAPPER)
    specs = (ModelSpec("swapper", "inswapper_128.onnx", url, None),)

    [path] = download_models(models_dir, specs=specs, progress=False)

    recorded = json.loads((models_dir / DIGESTS_FILE).read_text())
    assert recorded == {"inswapper_128.onnx": sha(SWAPPER)}
    assert verify_models(models_dir, specs=specs) == {"inswapper_128.onnx": "unpinned (recorded)"}
    assert trusted_model_path(models_dir, specs[0]) == path

    path.write_bytes(SWAPPER.replace(b"weights", b"WEIGHTS"))  # swapped on disk
    assert verify_models(models_dir, specs=specs) == {"inswapper_128.onnx": "digest mismatch"}
    with pytest.raises(ModelError, match="sha256 mismatch"):
        trusted_model_path(models_dir, specs[0])

    # Upstream now serves other bytes too: the record wins, and says how to re-trust.
    served.put("inswapper_128.onnx", b"republished")
    with pytest.raises(DownloadError, match="delete that entry"):
        download_models(models_dir, specs=specs, progress=False)
    path.unlink()
    assert verify_models(models_dir, specs=specs) == {"inswapper_128.onnx": "missing"}


def test_a_hand_placed_unpinned_file_is_recorded_at_first_use(models_dir: Path) -> None:
    spec = ModelSpec("swapper", "inswapper_128.onnx", "http://127.0.0.1:9/never", None)
    models_dir.mkdir()
    (models_dir / spec.filename).write_bytes(SWAPPER)

    assert verify_models(models_dir, specs=(spec,)) == {spec.filename: "unpinned (not recorded)"}
    download_models(models_dir, specs=(spec,), progress=False)  # no network needed
    assert verify_models(models_dir, specs=(spec,)) == {spec.filename: "unpinned (recorded)"}


def test_present_good_files_are_skipped(served: Served, models_dir: Path) -> None:
    archive = buffalo_zip()
    swapper_url = served.put("inswapper_128.onnx", SWAPPER)
    specs = (
        *zip_specs(served.put("buffalo_l.zip", archive), archive),
        ModelSpec("swapper", "inswapper_128.onnx", swapper_url, None),
    )
    download_models(models_dir, specs=specs, progress=False)
    assert len(served.requests) == 2

    download_models(models_dir, specs=specs, progress=False)
    assert len(served.requests) == 2

    # A damaged file is fetched again; its intact neighbours are not.
    (models_dir / "det_10g.onnx").write_bytes(b"bit rot")
    download_models(models_dir, specs=specs, progress=False)
    assert served.requests[2:] == ["/buffalo_l.zip"]
    assert (models_dir / "det_10g.onnx").read_bytes() == DETECTOR

    download_models(models_dir, specs=specs, progress=False, force=True)
    assert len(served.requests) == 5


def test_http_404_is_one_line_download_error(served: Served, models_dir: Path) -> None:
    specs = (ModelSpec("swapper", "inswapper_128.onnx", f"{served.url}/nope.onnx", None),)

    with pytest.raises(DownloadError, match="HTTP 404") as caught:
        download_models(models_dir, specs=specs, progress=False)

    assert "\n" not in str(caught.value)
    assert list(models_dir.iterdir()) == []


def test_unreachable_and_silent_servers_fail_fast(served: Served, models_dir: Path) -> None:
    refused = (ModelSpec("swapper", "inswapper_128.onnx", "http://127.0.0.1:9/x.onnx", None),)
    with pytest.raises(DownloadError, match="cannot reach"):
        download_models(models_dir, specs=refused, progress=False)

    (served.root / "slow").mkdir()
    silent = (ModelSpec("swapper", "inswapper_128.onnx", served.put("slow/x.onnx", b"x"), None),)
    started = time.monotonic()
    with pytest.raises(DownloadError, match="timed out"):
        download_models(models_dir, specs=silent, progress=False, timeout=0.2)
    assert time.monotonic() - started < 1.0
    assert list(models_dir.iterdir()) == []


def test_progress_false_prints_nothing(
    served: Served, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = served.put("inswapper_128.onnx", SWAPPER)
    specs = (ModelSpec("swapper", "inswapper_128.onnx", url, sha(SWAPPER)),)

    download_models(models_dir, specs=specs, progress=False)
    assert capsys.readouterr() == ("", "")

    download_models(models_dir, specs=specs, progress=True, force=True)
    assert "inswapper_128.onnx" in capsys.readouterr().err


def test_a_mirror_replaces_every_upstream_url(
    served: Served, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = buffalo_zip()
    served.put("buffalo_l.zip", archive)
    served.put("inswapper_128.onnx", SWAPPER)
    upstream = "https://upstream.invalid/releases/download/v0.7/buffalo_l.zip"
    specs = (
        *zip_specs(upstream, archive),
        ModelSpec("swapper", "inswapper_128.onnx", "https://upstream.invalid/inswapper_128.onnx"),
    )

    monkeypatch.setenv(MIRROR_ENV, served.url + "/")
    download_models(models_dir, specs=specs, progress=False)
    assert sorted(served.requests) == ["/buffalo_l.zip", "/inswapper_128.onnx"]

    monkeypatch.delenv(MIRROR_ENV)
    download_models(models_dir, specs=specs, progress=False, force=True, mirror=served.url)
    assert len(served.requests) == 4


def test_the_registry_names_the_three_real_models() -> None:
    assert [(s.key, s.filename) for s in MODELS] == [
        ("detector", "det_10g.onnx"),
        ("embedder", "w600k_r50.onnx"),
        ("swapper", "inswapper_128.onnx"),
    ]
    for spec in MODELS:
        for digest in (spec.sha256, spec.archive_sha256):
            assert digest is None or re.fullmatch(r"[0-9a-f]{64}", digest)
    assert spec_for("detector").remote_name == spec_for("w600k_r50.onnx").remote_name
    assert spec_for("detector").remote_name == "buffalo_l.zip"
    assert (
        spec_for("swapper").source_url("http://mirror/m/") == "http://mirror/m/inswapper_128.onnx"
    )


def test_a_download_puts_the_published_file_back_and_withdraws_its_trust(
    served: Served, models_dir: Path
) -> None:
    url = served.put("inswapper_128.onnx", SWAPPER)
    specs = (ModelSpec("swapper", "inswapper_128.onnx", url, sha(SWAPPER)),)
    models_dir.mkdir()
    mine = b"my own export " * 100
    (models_dir / "inswapper_128.onnx").write_bytes(mine)
    record_trusted(models_dir, "inswapper_128.onnx", sha(mine), source=Path("/elsewhere"))
    assert verify_models(models_dir, specs=specs) == {"inswapper_128.onnx": "trusted"}

    download_models(models_dir, specs=specs, progress=False)  # trusted and intact: kept
    assert served.requests == []
    download_models(models_dir, specs=specs, progress=False, force=True)
    assert (models_dir / "inswapper_128.onnx").read_bytes() == SWAPPER
    assert trusted_digests(models_dir) == {}
    assert verify_models(models_dir, specs=specs) == {"inswapper_128.onnx": "ok"}
