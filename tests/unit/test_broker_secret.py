"""The Redis password comes from a file, never from a command line."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from facefusion_tasks.config import (
    MAX_SECRET_BYTES,
    Settings,
    broker_url_from_env,
    with_password_file,
)
from facefusion_tasks.errors import InputError
from facefusion_tasks.metrics.exporter import parse_args
from facefusion_tasks.reasons import Reason
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


def test_a_password_file_that_is_not_a_small_regular_file_is_refused_at_once(
    tmp_path: Path,
) -> None:
    # /dev/zero grew the process to 22 GB until the kernel killed it, and a FIFO with no
    # writer blocked it for good: each is one config error now, read without blocking.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    huge = tmp_path / "huge"
    huge.write_bytes(b"x" * (MAX_SECRET_BYTES + 1))
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\n")
    cases = {
        "/dev/zero": "not a regular file",
        str(fifo): "not a regular file",
        str(tmp_path): "not a regular file",
        str(huge): "not a password",
        str(binary): "not UTF-8 text",
    }
    for path, why in cases.items():
        with pytest.raises(InputError, match=why) as caught:
            with_password_file("redis://redis:6379/0", path)
        assert caught.value.reason == Reason.CONFIG
    limit = tmp_path / "limit"
    limit.write_text("p" * MAX_SECRET_BYTES)
    assert with_password_file("redis://redis:6379/0", str(limit)).count("p") == MAX_SECRET_BYTES
