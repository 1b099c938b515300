"""callvault's advisory locks, in one place.

Every lock is session level and two-key: ``(LOCK_NAMESPACE, hashtext('<schema.table>[#purpose]'))``.
Purposes: none = the table's partitions (``maintain`` for its run; ``archive`` for detach and drop, see
:func:`callvault.maintain.table_lock`), ``archive`` = one archive run per table, ``worker`` = one
worker per table. pg_partman's own keys (single bigint ``hashtext(...)``) are :data:`PARTMAN_LOCKS`:
:func:`take_partition_locks` holds both kinds.
"""

from __future__ import annotations

import psycopg

from callvault.config import Settings
from callvault.db import Conn
from callvault.errors import AlreadyRunning

LOCK_NAMESPACE = 0x6376  # "cv": first key of callvault's two-key advisory locks
# pg_partman 4.7/5.x take these transaction-level advisory locks (single bigint key, hashtext of the text)
# in run_maintenance() and drop_partition_time(); holding them makes both skip with a notice.
PARTMAN_LOCKS = ("pg_partman run_maintenance", "pg_partman drop_partition_time")
CALLVAULT = "callvault"  # the name take_partition_locks records for callvault's own table lock


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


def take_partition_locks(conn: Conn, k: int, held: list[str]) -> None:
    """Take callvault's table lock (key ``k``) and pg_partman's locks, waiting (``lock_timeout``
    applies), recording each in ``held`` as it is taken; on an error the ones taken are released (when
    the connection can still say so) and the error is raised."""
    try:
        conn.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_NAMESPACE, k))
        held.append(CALLVAULT)
        for name in PARTMAN_LOCKS:
            conn.execute("SELECT pg_advisory_lock(hashtext(%s)::bigint)", (name,))
            held.append(name)
    except psycopg.Error:
        if not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            release_partition_locks(conn, k, held)
        raise


def release_partition_locks(conn: Conn, k: int, held: list[str]) -> None:
    """Release what :func:`take_partition_locks` recorded in ``held``, newest first."""
    while held:
        name = held.pop()
        if name == CALLVAULT:
            conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_NAMESPACE, k))
        else:
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s)::bigint)", (name,))
