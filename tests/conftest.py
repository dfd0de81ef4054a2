"""Shared fixtures: stand-in models and settings built once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

from facefusion_tasks.config import Settings
from facefusion_tasks.models.standin import make_test_models
from facefusion_tasks.store import JobStore, connect

if TYPE_CHECKING:
    from tests.s3server import S3Server


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stand-in models under their real names (the swapper converts to dynamic batch)."""
    directory = tmp_path_factory.mktemp("models")
    make_test_models(directory)
    return directory


@pytest.fixture(scope="session")
def slow_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stand-ins whose detector carries result-neutral compute (about 1 s for a 2 s chunk
    here), for tests that must catch a chunk mid-way: the light ones finish a chunk before a
    watch interval has passed."""
    directory = tmp_path_factory.mktemp("models-slow")
    make_test_models(directory, detector_gflops=2.0)
    return directory


@pytest.fixture(scope="session")
def fixed_batch_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stand-ins whose swapper hard-codes batch 1 inside the graph (conversion must fail)."""
    directory = tmp_path_factory.mktemp("models-fixed")
    make_test_models(directory, swapper_batchable=False)
    return directory


@pytest.fixture()
def settings(models_dir: Path) -> Settings:
    """CPU settings on the stand-in models, isolated from the caller's FACEFUSION_* variables."""
    return Settings.from_env(
        {},
        models_dir=models_dir,
        execution_provider="cpu",
        batch_size=4,
        allow_standin_models=True,
    )


@pytest.fixture()
def redis_url() -> Iterator[str]:
    """A private Redis database, flushed before and after the test (rq's pattern): the one
    FACEFUSION_TEST_REDIS names, so checkouts testing side by side never meet."""
    from tests.cluster import SHARED_REDIS

    client = redis.Redis.from_url(SHARED_REDIS)
    client.flushdb()
    try:
        yield SHARED_REDIS
    finally:
        client.flushdb()
        client.close()


@pytest.fixture()
def store(redis_url: str) -> JobStore:
    """The job store on that database."""
    return JobStore(connect(redis_url))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One real S3 server (SeaweedFS) for the session, with SigV4 credentials."""
    from tests.s3server import s3_server as start

    with start(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture()
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """This process's AWS settings point at the test S3 server (the project's client is built
    afresh from them); the settings are returned for subprocesses."""
    from facefusion_tasks import objects

    env = s3_server.env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    objects._client.cache_clear()
    yield env
    objects._client.cache_clear()
