"""``async with atenant(conn, tenant_id):`` -- run a block as one tenant.

THE SOURCE of both twins: ``_sync_session.py`` (``with tenant(conn, tenant_id):``) is generated from this
module by ``scripts/async_to_sync.py`` (``make sync-twins``); ``tests/test_twins.py`` checks it is current.

The tenant is set with ``SET LOCAL app.tenant_id`` (after ``SET LOCAL citus.propagate_set_commands
TO 'local'``, so Citus sends it to the workers too): transaction-local, so it ends
with the block's transaction and a pooled connection (or a PgBouncer server connection in
transaction mode) handed to the next request carries nothing over. No session-level ``SET``.
The tenant statement is never prepared server-side (``prepare=False``): PgBouncer 1.18 in transaction
mode does not carry prepared statements between server connections. The block's own statements are
the caller's: on a connection behind PgBouncer, open it with ``prepare_threshold=None``.

* On an idle connection the block is its own transaction (committed at the end, rolled back on an
  exception).
* Inside a transaction the caller already opened, the block is a savepoint and the tenant is reset
  to ``''`` (no rows) when it ends, so code after the block in the same transaction sees nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from typing import Any
from uuid import UUID

import psycopg
from psycopg.pq import TransactionStatus

from callvault.tenancy.ids import tenant_value
from callvault.tenancy.policy import PROPAGATE_SQL, set_tenant_sql


@asynccontextmanager
async def atenant(
    conn: psycopg.AsyncConnection[Any], tenant_id: UUID | str, *, pipeline: bool = False
) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """``pipeline``: send BEGIN, the tenant and the block's first statement in one round trip
    (psycopg pipeline mode; the block must not use COPY). The reads in :mod:`callvault.query` do."""
    value = tenant_value(tenant_id)
    nested = conn.info.transaction_status != TransactionStatus.IDLE
    async with conn.pipeline() if pipeline else nullcontext(), conn.transaction():
        await conn.execute(PROPAGATE_SQL, prepare=False)
        await conn.execute(set_tenant_sql(value), prepare=False)
        yield conn
        if nested:
            await conn.execute(set_tenant_sql(""), prepare=False)
