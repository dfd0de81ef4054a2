"""Models are trusted only on purpose: stand-ins on request, converted copies by digest."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from facefusion_tasks.config import Settings
from facefusion_tasks.errors import ModelError
from facefusion_tasks.faces.batching import CONVERTER_VERSION, batched_model_path
from facefusion_tasks.faces.loader import batch_cache, load_models
from facefusion_tasks.models.standin import make_test_models


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
