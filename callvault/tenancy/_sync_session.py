"""GENERATED from _async_session.py by scripts/async_to_sync.py: do not edit; edit the async source and run
``make sync-twins``. The synchronous twin of :mod:`callvault.tenancy._async_session` (see there for the why).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any
from uuid import UUID

import psycopg
from psycopg.pq import TransactionStatus

from callvault.tenancy.ids import tenant_value
from callvault.tenancy.policy import PROPAGATE_SQL, set_tenant_sql


@contextmanager
def tenant(
    conn: psycopg.Connection[Any], tenant_id: UUID | str, *, pipeline: bool = False
) -> Iterator[psycopg.Connection[Any]]:
    """``pipeline``: send BEGIN, the tenant and the block's first statement in one round trip
    (psycopg pipeline mode; the block must not use COPY). The reads in :mod:`callvault.query` do."""
    value = tenant_value(tenant_id)
    nested = conn.info.transaction_status != TransactionStatus.IDLE
    with conn.pipeline() if pipeline else nullcontext(), conn.transaction():
        conn.execute(PROPAGATE_SQL, prepare=False)
        conn.execute(set_tenant_sql(value), prepare=False)
        yield conn
        if nested:
            conn.execute(set_tenant_sql(""), prepare=False)
