"""callvault's advisory locks, in one place.

Every lock is session level and two-key: ``(LOCK_NAMESPACE, hashtext('<schema.table>[#purpose]'))``.
Purposes: none = the table's partitions (``maintain`` for its run; ``archive`` for detach and drop, see
:func:`callvault.maintain.table_lock`), ``archive`` = one archive run per table, ``worker`` = one
worker per table. pg_partman's own keys (single bigint ``hashtext(...)``) are in
:data:`callvault.maintain.PARTMAN_LOCKS`.
"""

from __future__ import annotations

import psycopg

from callvault.config import Settings
from callvault.db import Conn
from callvault.errors import AlreadyRunning

LOCK_NAMESPACE = 0x6376  # "cv": first key of callvault's two-key advisory locks


def key(conn: Conn, settings: Settings, purpose: str = "") -> int:
    """The second key: ``hashtext('schema.table')`` or ``hashtext('schema.table#purpose')``."""
    row = conn.execute("SELECT hashtext(%s)", (settings.qualified + (f"#{purpose}" if purpose else ""),)).fetchone()
    assert row is not None
    return int(row[0])


def acquire(conn: Conn, settings: Settings, purpose: str, busy: str, *, wait: bool = False) -> int:
    """Take the lock (waiting when ``wait``; ``lock_timeout`` applies) or raise AlreadyRunning(busy).
    Returns the key for :func:`release`."""
    k = key(conn, settings, purpose)
    if wait:
        conn.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_NAMESPACE, k))
        return k
    got = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (LOCK_NAMESPACE, k)).fetchone()
    if not (got and got[0]):
        raise AlreadyRunning(busy)
    return k


def release(conn: Conn, k: int) -> None:
    """Release a lock taken by :func:`acquire`, when the connection can still say so (a closed or
    failed connection has lost its session locks anyway)."""
    if not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_NAMESPACE, k))
