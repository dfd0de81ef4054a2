"""Models are trusted only on purpose: stand-ins on request, converted copies by digest, your
own files after `models trust` checked their contract."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from facefusion_tasks import cli, doctor, policy
from facefusion_tasks.config import Settings
from facefusion_tasks.errors import InputError, ModelError
from facefusion_tasks.faces.batching import CONVERTER_VERSION, batched_model_path
from facefusion_tasks.faces.loader import batch_cache, load_models
from facefusion_tasks.models.contract import ROLES, Tensor, problems
from facefusion_tasks.models.digests import (
    DIGESTS_FILE,
    recorded_digests,
    sha256_file,
    trusted_digests,
    verify_models,
)
from facefusion_tasks.models.standin import make_test_models
from facefusion_tasks.models.trust import Trusted, roles_of, trust_file, trust_files
from facefusion_tasks.reasons import Reason
from tests.models import reexport_all, renamed_copy, without_emap


def _weights(path: Path) -> list[np.ndarray]:
    return [numpy_helper.to_array(init) for init in onnx.load(str(path)).graph.initializer]


def _private(path: Path) -> bool:
    info = path.lstat()
    return (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid == os.getuid()
        and stat.S_IMODE(info.st_mode) & 0o077 == 0
    )


def test_a_self_declared_standin_is_verified_like_any_model(models_dir: Path) -> None:
    # The stand-ins say producer_name "facefusion-tasks"; that alone must not skip the digest.
    settings = Settings.from_env({}, models_dir=models_dir, execution_provider="cpu")
    assert settings.allow_standin_models is False
    with pytest.raises(ModelError, match="det_10g.onnx"):
        load_models(settings)


def test_standins_load_where_they_are_asked_for(models_dir: Path) -> None:
    settings = Settings.from_env(
        {"FACEFUSION_ALLOW_STANDIN_MODELS": "1"}, models_dir=models_dir, execution_provider="cpu"
    )
    assert load_models(settings).standin


def test_a_tampered_converted_copy_is_never_loaded(tmp_path: Path) -> None:
    source = make_test_models(tmp_path / "models")["swapper"]
    cache = tmp_path / "cache"
    first = batched_model_path(source, cache)
    assert first is not None and first != source
    assert f".v{CONVERTER_VERSION}." in first.name
    record = json.loads(first.with_name(first.name.replace(".onnx", ".json")).read_text())
    assert record["converter"] == CONVERTER_VERSION
    genuine = _weights(first)

    # What the hostile test did: the copy's weights multiplied by -3, the source untouched.
    model = onnx.load(str(first))
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32:
            init.CopyFrom(numpy_helper.from_array(array * -3, init.name))
    onnx.save(model, str(first))

    again = batched_model_path(source, cache)
    assert again == first
    for got, want in zip(_weights(again), genuine, strict=True):
        np.testing.assert_array_equal(got, want)


def test_converted_models_go_to_a_private_directory_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    # A shared models volume whose .batched anyone may write: not a place to load models from.
    (models / ".batched").mkdir(mode=0o777)
    os.chmod(models / ".batched", 0o777)
    # The user's cache is shared too, and the per-user temp path is a planted symlink.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    (tmp_path / "xdg" / "facefusion-tasks" / "batched").mkdir(parents=True, mode=0o777)
    os.chmod(tmp_path / "xdg" / "facefusion-tasks" / "batched", 0o777)
    temp = tmp_path / "tmp"
    planted = temp / f"facefusion-tasks-{os.getuid()}"
    planted.mkdir(parents=True)
    (tmp_path / "attacker").mkdir(mode=0o777)
    (planted / "batched").symlink_to(tmp_path / "attacker")
    monkeypatch.setattr(tempfile, "tempdir", str(temp))

    cache = batch_cache(models)
    assert cache.parent == temp and cache.name.startswith("facefusion-tasks-batched-")
    assert _private(cache)


def test_the_fallback_cache_is_private_to_the_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / ".batched").write_text("not a directory")  # as good as a read-only volume
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cache = batch_cache(models)
    assert cache == tmp_path / "xdg" / "facefusion-tasks" / "batched"
    assert _private(cache)


# --- `models trust`: your own files, checked and trusted on purpose ---------------------------


def _cpu(models: Path, **changes: object) -> Settings:
    """Settings that load `models` on the CPU, without the stand-in allowance unless asked."""
    return Settings.from_env({}, models_dir=models, execution_provider="cpu", **changes)  # type: ignore[arg-type]


def _trust_all(files: Path, models: Path) -> list[Trusted]:
    return [trust_file(path, role, models) for path, role in roles_of(sorted(files.glob("*")))]


def test_a_reexported_model_is_trusted_then_loads_like_a_pinned_one(
    models_dir: Path, tmp_path: Path
) -> None:
    mine = reexport_all(models_dir, tmp_path / "mine")
    models = tmp_path / "models"
    # Before: the re-saved detector is not the pinned det_10g, and nothing vouches for it.
    shutil.copytree(mine, models)
    with pytest.raises(ModelError, match="det_10g.onnx: sha256 mismatch"):
        load_models(_cpu(models))

    done = _trust_all(mine, models)
    assert [t.role.key for t in done] == ["detector", "swapper", "embedder"]
    for trusted in done:
        assert trusted.sha256 == sha256_file(models / trusted.path.name)
        assert trusted.sha256 == sha256_file(mine / trusted.path.name)
        assert trusted.copied_from == mine / trusted.path.name
    record = json.loads((models / DIGESTS_FILE).read_text())
    assert set(record["trusted"]) == {"det_10g.onnx", "w600k_r50.onnx", "inswapper_128.onnx"}
    assert record["trusted"]["det_10g.onnx"]["source"] == str(mine / "det_10g.onnx")
    assert recorded_digests(models) == {}  # trust is its own record, not a first-use one
    # Loads with no stand-in allowance: the trusted record is what vouches for these bytes.
    loaded = load_models(_cpu(models))
    assert not loaded.standin
    assert set(verify_models(models).values()) == {"trusted"}


def test_a_trusted_file_that_changes_afterwards_is_refused(
    models_dir: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    _trust_all(reexport_all(models_dir, tmp_path / "mine"), models)
    model = onnx.load(str(models / "inswapper_128.onnx"))
    model.doc_string = "edited after it was trusted"  # the same contract, other bytes
    onnx.save(model, str(models / "inswapper_128.onnx"))
    assert verify_models(models)["inswapper_128.onnx"] == "digest mismatch"
    with pytest.raises(ModelError, match="changed since `models trust` recorded it") as caught:
        load_models(_cpu(models))
    assert "facefusion-tasks models trust" in str(caught.value)


def test_trusting_a_standin_ends_its_bypass(models_dir: Path, tmp_path: Path) -> None:
    """A trusted file is checked even where stand-ins are allowed: the record is explicit."""
    models = shutil.copytree(models_dir, tmp_path / "models", ignore=shutil.ignore_patterns(".*"))
    [trusted] = [trust_file(p, r, models) for p, r in roles_of([models / "w600k_r50.onnx"])]
    assert trusted.copied_from is None  # already in place: nothing copied, only recorded
    assert load_models(_cpu(models, allow_standin_models=True)).standin
    data = bytearray((models / "w600k_r50.onnx").read_bytes())
    data[-1] ^= 1  # a flipped bit in the last weight
    (models / "w600k_r50.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="w600k_r50.onnx: sha256 mismatch"):
        load_models(_cpu(models, allow_standin_models=True))


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (
            lambda m, d: renamed_copy(m / "det_10g.onnx", d / "inswapper_128.onnx"),
            "1 input where the swapper has 2 (target, source)",
        ),
        (
            lambda m, d: without_emap(m / "inswapper_128.onnx", d / "inswapper_128.onnx"),
            "no 512×512 emap as the graph's last initializer",
        ),
        (
            lambda m, d: renamed_copy(m / "inswapper_128.onnx", d / "w600k_r50.onnx"),
            "2 inputs where the embedder has 1 (input.1)",
        ),
    ],
)
def test_a_file_with_the_wrong_contract_is_refused_and_nothing_is_recorded(
    make,
    why: str,
    models_dir: Path,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    wrong = make(models_dir, tmp_path / "mine")
    models = tmp_path / "models"
    with pytest.raises(InputError, match=re.escape(why)) as caught:
        [trust_file(p, r, models) for p, r in roles_of([wrong])]
    assert policy.exit_code(caught.value.reason) == 2
    assert str(caught.value).startswith(f"{wrong}: refused as the ")
    assert not (models / wrong.name).exists() and not (models / DIGESTS_FILE).exists()


def test_several_files_are_trusted_all_or_none(models_dir: Path, tmp_path: Path) -> None:
    mine = reexport_all(models_dir, tmp_path / "mine")
    wrong = without_emap(
        models_dir / "inswapper_128.onnx", tmp_path / "wrong" / "inswapper_128.onnx"
    )
    models = tmp_path / "models"
    # The good embedder and detector come first; the swapper without emap is refused.
    files = [mine / "w600k_r50.onnx", mine / "det_10g.onnx", wrong]
    with pytest.raises(InputError, match="no 512×512 emap"):
        trust_files(files, models)
    assert not models.exists()  # nothing copied, nothing recorded
    done = trust_files([mine / "w600k_r50.onnx", mine / "det_10g.onnx"], models)
    assert [t.path.name for t in done] == ["w600k_r50.onnx", "det_10g.onnx"]
    assert set(json.loads((models / DIGESTS_FILE).read_text())["trusted"]) == {
        "w600k_r50.onnx",
        "det_10g.onnx",
    }


def test_the_contract_names_every_mismatch(models_dir: Path) -> None:
    embedder = ROLES[1]
    good = [Tensor("input.1", (None, 3, 112, 112))], [Tensor("683", (None, 512))]
    model = onnx.load(str(models_dir / "w600k_r50.onnx"))
    assert problems(embedder, *good, model) == []
    bad = problems(
        embedder,
        [Tensor("data", (1, 3, 112, 112))],
        [Tensor("683", (1, 256), "tensor(float16)")],
        model,
    )
    assert bad == [
        "input 0 is named 'data', expected 'input.1'",
        "output 0 '683' is tensor(float16); the pipeline feeds and reads float32",
    ]
    assert problems(embedder, good[0], [Tensor("683", (1, 256))], model) == [
        "output 0 '683' has shape [1, 256], expected [?, 512]"
    ]
    # SCRFD outputs may be [anchors, C] or a batched export's [N, anchors, C].
    detector = ROLES[0]
    scores = detector.outputs[0]
    assert scores.problem(Tensor("448", (None, None, 1)), "output 0") is None
    assert scores.problem(Tensor("448", (12800, 2)), "output 0") is not None


def test_the_name_decides_the_role_before_anything_is_read(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"whatever")
    with pytest.raises(InputError, match="its name says no role; name the file det_10g.onnx"):
        roles_of([tmp_path / "model.onnx"])
    with pytest.raises(InputError, match="no such file") as missing:
        roles_of([tmp_path / "det_10g.onnx"])
    assert missing.value.reason is Reason.MISSING_FILE
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "det_10g.onnx").write_bytes(b"x")
    (tmp_path / "det_10g.onnx").write_bytes(b"y")
    with pytest.raises(InputError, match="two files given for det_10g.onnx"):
        roles_of([tmp_path / "a" / "det_10g.onnx", tmp_path / "det_10g.onnx"])
    with pytest.raises(InputError, match="not an ONNX model"):
        trust_file(tmp_path / "det_10g.onnx", ROLES[0], tmp_path / "models")


def test_models_trust_and_verify_on_the_command_line(
    models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = reexport_all(models_dir, tmp_path / "mine")
    models = tmp_path / "models"
    files = [str(mine / name) for name in ("det_10g.onnx", "w600k_r50.onnx")]
    assert cli.main(["models", "trust", *files, "--dir", str(models)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    digest = sha256_file(mine / "det_10g.onnx")
    assert lines[0] == (
        f"trusted det_10g.onnx as the detector (copied from {mine / 'det_10g.onnx'}): "
        f"sha256 {digest}, recorded in {models / DIGESTS_FILE}"
    )
    assert cli.main(["models", "verify", "--dir", str(models)]) == 2  # no swapper yet
    out = capsys.readouterr().out
    assert "det_10g.onnx: trusted\n" in out and "inswapper_128.onnx: missing\n" in out
    assert "trusted on purpose (`models trust`), not the published files:" in out
    assert f"  det_10g.onnx: sha256 {digest}" in out

    wrong = without_emap(models_dir / "inswapper_128.onnx", tmp_path / "bad" / "inswapper_128.onnx")
    assert cli.main(["models", "trust", str(wrong), "--dir", str(models)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"facefusion-tasks: error: {wrong}: refused as")


def test_doctor_lists_trusted_files_apart(models_dir: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    _trust_all(reexport_all(models_dir, tmp_path / "mine"), models)
    report = doctor._models(_cpu(models))
    assert report["ok"] and report["standin"] == []
    assert set(report["files"].values()) == {"trusted"}
    assert report["trusted"]["inswapper_128.onnx"] == sha256_file(models / "inswapper_128.onnx")


def test_a_record_from_before_trust_reads_as_before(tmp_path: Path) -> None:
    (tmp_path / DIGESTS_FILE).write_text(json.dumps({"inswapper_128.onnx": "ab" * 32}))
    assert recorded_digests(tmp_path) == {"inswapper_128.onnx": "ab" * 32}
    assert trusted_digests(tmp_path) == {}
    (tmp_path / DIGESTS_FILE).write_text(json.dumps({"trusted": "not an object"}))
    with pytest.raises(ModelError, match="not a JSON object of digests"):
        trusted_digests(tmp_path)
