"""kombu's Redis acknowledgements, made to free their prefetch slot even when Redis refuses."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def install() -> None:
    """Patch kombu's Redis QoS so that an ack or reject frees the worker's prefetch slot even
    when Redis refuses the write (full under maxmemory, unable to save, a replica). kombu
    frees it only after its Redis write succeeds: one refused write left a worker with
    prefetch 1 holding a slot for ever, alive and heartbeating and never taking another
    message (a fault probe with a brief maxmemory spell). The message stays in Redis's
    unacknowledged set, where the stall sweep acknowledges it once its work has ended (or
    kombu's visibility timeout restores it, to be skipped). Idempotent."""
    from kombu.transport import redis as transport
    from kombu.transport import virtual

    qos: Any = transport.QoS
    if getattr(qos, "_frees_refused_acks", False):
        return
    if not all(hasattr(qos, name) for name in ("_remove_from_indices", "restore_by_tag")):
        log.warning("kombu's Redis QoS changed; a refused ack may hold its prefetch slot")
        return

    def ack(self: Any, delivery_tag: Any) -> None:
        try:
            self._remove_from_indices(delivery_tag).execute()
        finally:
            virtual.QoS.ack(self, delivery_tag)

    def reject(self: Any, delivery_tag: Any, requeue: bool = False) -> None:
        try:
            if requeue:
                self.restore_by_tag(delivery_tag, leftmost=True)
            else:
                self._remove_from_indices(delivery_tag).execute()
        finally:
            virtual.QoS.ack(self, delivery_tag)

    qos.ack, qos.reject, qos._frees_refused_acks = ack, reject, True
