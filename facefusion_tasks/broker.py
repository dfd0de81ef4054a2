"""Redis clients that fail fast and say why: bounded timeouts, no retrying a refused password."""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from facefusion_tasks.errors import FaceFusionError
from facefusion_tasks.policy import broker_refused, refusal_code
from facefusion_tasks.reasons import Reason

#: Seconds to connect, and to wait for any one reply, in CLI and producer paths.
DEFAULT_TIMEOUT = 3.0
#: Further attempts after a refused or dropped connection. Never after a timeout (a server
#: that does not answer in 3 s will not in 6) nor after an authentication error.
DEFAULT_RETRIES = 2


class BrokerUnavailable(FaceFusionError):
    """Redis cannot be reached or refuses us; the message is one line naming host:port."""

    reason = Reason.BROKER_UNAVAILABLE


class _RetryButNotAuth(Retry):
    """redis-py's AuthenticationError is a ConnectionError, so a plain Retry keeps sending a
    password Redis has refused (or none where one is needed): give up on those at once."""

    def call_with_retry(self, do: Any, fail: Any, *args: Any, **kwargs: Any) -> Any:
        def not_auth(error: Exception) -> bool:
            return not isinstance(error, redis.AuthenticationError)

        kwargs.setdefault("is_retryable", not_auth)
        return super().call_with_retry(do, fail, *args, **kwargs)


def client_kwargs(
    *, timeout: float = DEFAULT_TIMEOUT, retries: int = DEFAULT_RETRIES
) -> dict[str, Any]:
    """Keyword arguments for redis.Redis.from_url: every wait bounded by `timeout`, at most
    `retries` quick further attempts after a refused or dropped connection, and a timeout or an
    authentication failure raised at once."""
    if timeout <= 0 or retries < 0:
        raise ValueError("timeout must be positive and retries not negative")
    return {
        "socket_connect_timeout": timeout,
        "socket_timeout": timeout,
        "retry": _RetryButNotAuth(
            ExponentialBackoff(cap=1.0, base=0.1),
            retries,
            supported_errors=(redis.ConnectionError,),
        ),
        "retry_on_error": [redis.ConnectionError],
    }


def where(url: str) -> str:
    """host:port of a redis:// URL, for messages (never the password)."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def lost(error: BaseException) -> bool:
    """Whether `error` means the broker went away mid-command or refuses for now (full under
    maxmemory, unable to persist, a read-only replica: policy.broker_refused), kombu's
    connection errors, or the bare RuntimeError Celery's Redis result backend gives up with
    ("Retry limit exceeded while trying to reconnect to the Celery result store backend")."""
    if broker_refused(error):
        return True
    kombu = sys.modules.get("kombu.exceptions")  # loaded by whoever sent through Celery
    if kombu is not None and isinstance(error, kombu.OperationalError):
        return True
    return isinstance(error, RuntimeError) and "Retry limit exceeded" in str(error)


def explain(error: BaseException, url: str) -> BrokerUnavailable:
    """One line for a Redis failure: which server, and what it means for the user."""
    at = where(url)
    if isinstance(error, redis.AuthenticationError) or "WRONGPASS" in str(error):
        # Redis's wording differs by version and protocol; what we sent does not.
        if urlsplit(url).password is None:
            return BrokerUnavailable(
                f"Redis at {at} requires a password (put it in FACEFUSION_BROKER_PASSWORD_FILE)"
            )
        return BrokerUnavailable(f"Redis at {at} refused the password")
    if isinstance(error, redis.TimeoutError):
        return BrokerUnavailable(f"cannot connect to Redis at {at} (no answer in time)")
    if isinstance(error, redis.OutOfMemoryError):
        # Its maxmemory is reached and it evicts nothing: every write is refused.
        return BrokerUnavailable(f"Redis at {at} is full (maxmemory reached) and refuses writes")
    if refusal_code(error) == "MISCONF":
        # Its last snapshot failed and stop-writes-on-bgsave-error is on: PING is refused too.
        return BrokerUnavailable(
            f"Redis at {at} cannot save to its disk (MISCONF) and refuses writes; see its log"
        )
    if isinstance(error, redis.ReadOnlyError):
        return BrokerUnavailable(f"Redis at {at} is a read-only replica; point at the primary")
    if isinstance(error, redis.ResponseError):
        return BrokerUnavailable(f"Redis at {at} refused: {' '.join(str(error).split())}")
    return BrokerUnavailable(f"cannot connect to Redis at {at}")


def connect(url: str, *, decode_responses: bool = True, **overrides: Any) -> redis.Redis:
    """A fail-fast client, checked with one PING: BrokerUnavailable (exit 69) when Redis cannot
    be reached or refuses the credentials."""
    options = client_kwargs() | overrides
    client = redis.Redis.from_url(url, decode_responses=decode_responses, **options)
    try:
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
        client.close()
        raise explain(exc, url) from None
    return client
