"""The writers' connection pools: psycopg_pool's, with reconnection attempts at least every
``MAX_RECONNECT_DELAY_S`` seconds.

psycopg_pool retries a failed connection with a delay that doubles each time (1, 2, 4, 8, 16 s ...). After
a failover (Patroni promotes a standby ~20-30 s after the primary dies) the next attempt could come 30 s
after the new primary is up, and every batch waits that long. With the delay capped, a writer whose DSN
lists every node (``target_session_attrs=read-write``) finds the new primary within ~2 s of its
promotion. (``_add_connection`` is psycopg_pool's own hook, pinned with it in pyproject.toml;
tests/test_ha.py measures the outage.)
"""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool, ConnectionPool
from psycopg_pool.base import AttemptWithBackoff

MAX_RECONNECT_DELAY_S = 2.0


class _CappedAttempt(AttemptWithBackoff):
    """psycopg_pool's backoff, never longer than ``MAX_RECONNECT_DELAY_S`` between attempts."""

    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, MAX_RECONNECT_DELAY_S)


class FailoverPool(ConnectionPool):
    """:class:`psycopg_pool.ConnectionPool` with capped reconnection delays."""

    def _add_connection(self, attempt: Any, growing: bool = False) -> None:
        super()._add_connection(attempt or _CappedAttempt(timeout=self.reconnect_timeout), growing)


class AsyncFailoverPool(AsyncConnectionPool):
    """:class:`psycopg_pool.AsyncConnectionPool` with capped reconnection delays."""

    async def _add_connection(self, attempt: Any, growing: bool = False) -> None:
        await super()._add_connection(attempt or _CappedAttempt(timeout=self.reconnect_timeout), growing)
