"""The Redis password comes from a file, never from a command line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from facefusion_tasks.config import Settings, broker_url_from_env, with_password_file
from facefusion_tasks.errors import InputError
from facefusion_tasks.metrics.exporter import parse_args
from tests.cluster import private_redis

PASSWORD = "s3cret/with:odd@chars"


@pytest.fixture()
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "redis_password"
    path.write_text(PASSWORD + "\n")  # as `openssl rand … > file` or a Secret leaves it
    return path


@pytest.fixture()
def protected_redis(tmp_path: Path) -> Iterator[int]:
    """A private redis-server that asks for PASSWORD (given in a config file, as deployed)."""
    with private_redis(tmp_path, password=PASSWORD) as server:
        yield server.port


def test_settings_put_the_password_file_into_the_broker_url(
    password_file: Path, protected_redis: int
) -> None:
    env = {
        "FACEFUSION_BROKER_URL": f"redis://127.0.0.1:{protected_redis}/0",
        "FACEFUSION_BROKER_PASSWORD_FILE": str(password_file),
    }
    settings = Settings.from_env(env)
    assert redis.Redis.from_url(settings.broker_url).ping() is True
    assert broker_url_from_env(env) == settings.broker_url
    # Without the file, Redis refuses: the password really is needed.
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(env["FACEFUSION_BROKER_URL"]).ping()


def test_the_exporter_reads_the_broker_from_the_environment(
    password_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FACEFUSION_BROKER_URL", "redis://redis:6379/0")
    monkeypatch.setenv("FACEFUSION_BROKER_PASSWORD_FILE", str(password_file))
    url = parse_args([]).redis_url
    assert redis.Redis.from_url(url).connection_pool.connection_kwargs["password"] == PASSWORD


def test_one_source_per_secret(password_file: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="password in the file only"):
        with_password_file("redis://:other@redis:6379/0", str(password_file))
    with pytest.raises(InputError, match="cannot read the broker password file"):
        with_password_file("redis://redis:6379/0", str(tmp_path / "missing"))
    assert with_password_file("", str(password_file)) == ""
