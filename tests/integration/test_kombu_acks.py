"""A worker whose acknowledgement Redis refuses keeps taking messages (a real Redis, full)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from facefusion_tasks.app import make_app
from facefusion_tasks.config import Settings
from tests.cluster import private_redis

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("how", ["ack", "reject", "requeue"])
def test_an_acknowledgement_redis_refuses_still_frees_the_prefetch_slot(
    tmp_path: Path, how: str
) -> None:
    """kombu freed a worker's prefetch slot only after its Redis write: refused once (a
    maxmemory spell), a worker with prefetch 1 heartbeated for ever and never took another
    message, and its jobs sat RUNNING with nothing moving them (a fault probe's finding)."""
    with private_redis(tmp_path) as server:
        app = make_app(Settings.from_env({}, broker_url=server.url))
        client = redis.Redis.from_url(server.url)
        with app.connection_for_read() as connection:
            channel = connection.default_channel
            channel.basic_qos(prefetch_count=1)
            line = connection.SimpleQueue("acks")
            line.put({"n": 1})
            line.put({"n": 2})
            message = line.get(timeout=5)
            assert not channel.qos.can_consume()  # its one slot is taken
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", "1")
            try:
                with pytest.raises(redis.exceptions.OutOfMemoryError):
                    if how == "ack":
                        message.ack()
                    else:
                        message.reject(requeue=how == "requeue")
            finally:
                client.config_set("maxmemory", "0")
            assert channel.qos.can_consume()
            assert line.get(timeout=5).payload == {"n": 2}  # it takes the next one
            line.close()
