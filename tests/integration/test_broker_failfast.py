"""Broker failures end in seconds with one line naming host:port, against a real Redis."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from facefusion_tasks.broker import BrokerUnavailable, client_kwargs, connect, where
from facefusion_tasks.policy import EXIT_UNAVAILABLE, exit_code
from tests.cluster import free_port, private_redis

PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A private redis-server with requirepass (from a config file, as deployed)."""
    with private_redis(tmp_path_factory.mktemp("redis"), password=PASSWORD) as server:
        yield server.port


def _refused(url: str, **options: float) -> tuple[str, float]:
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as caught:
        connect(url, **(client_kwargs(**options) if options else {}))
    assert exit_code(caught.value.reason) == EXIT_UNAVAILABLE
    assert EXIT_UNAVAILABLE not in (0, 1, 2)
    return str(caught.value), time.monotonic() - started


def test_the_right_password_connects(protected: int) -> None:
    client = connect(f"redis://:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{protected}/0")
    assert client.ping() is True


def test_no_password_is_refused_at_once(protected: int) -> None:
    message, seconds = _refused(f"redis://127.0.0.1:{protected}/0")
    assert message.startswith(f"Redis at 127.0.0.1:{protected} requires a password")
    assert seconds < 1.0


def test_a_wrong_password_is_refused_at_once(protected: int) -> None:
    message, seconds = _refused(f"redis://:wrong@127.0.0.1:{protected}/0")
    assert message == f"Redis at 127.0.0.1:{protected} refused the password"
    assert "wrong" not in message
    assert seconds < 1.0


def test_a_closed_port_is_reported_in_seconds() -> None:
    port = free_port()
    message, seconds = _refused(f"redis://127.0.0.1:{port}/0")
    assert message == f"cannot connect to Redis at 127.0.0.1:{port}"
    assert seconds < 3.0


def test_a_listener_that_never_answers_times_out_once() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        message, seconds = _refused(f"redis://127.0.0.1:{port}/0", timeout=1.0)
    assert message == f"cannot connect to Redis at 127.0.0.1:{port} (no answer in time)"
    assert 1.0 <= seconds < 2.0


def test_messages_name_the_server_never_the_password() -> None:
    assert where("redis://:hunter2@redis.internal:6380/0") == "redis.internal:6380"
    assert where("rediss://redis") == "redis:6379"
