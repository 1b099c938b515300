"""Tenant-scoped reads that always pin the partition key with raw ``>=`` / ``<`` bounds.

Every read names one tenant and a bounded window ``[since, until)``; a window that is missing, empty,
or wider than ``max_window`` (default: the table's hot retention) is refused before any SQL runs.
Statements use the bounds as parameters, never functions of ``started_at``, so the planner prunes
partitions — at plan time for custom plans, at executor start ("Subplans Removed") for the generic
plans Postgres may switch to when a statement is prepared.

Every read runs in its own transaction with the tenant set transaction-locally
(:func:`callvault.tenancy.tenant`), so under row-level security the application role sees that
tenant's rows and nothing else, even if a statement's own ``tenant_id`` filter were wrong.

The readers never prepare their statements server-side (``prepare=False``, whatever the connection's
``prepare_threshold``): a prepared statement lives on one server connection, and PgBouncer 1.18 in
transaction mode hands the next transaction another one (``"_pg3_0" already exists`` / ``does not
exist``). So a reader is safe behind PgBouncer on any connection; each read is planned with its own
bounds (plan-time pruning).

**Across tiers.** Given an archive store (``store_url=``, or the configured ``archive_url``),
:meth:`Reader.recent_calls` and :meth:`Reader.get_call` (with ``started_at``) also serve the parts of a
window that no attached partition covers from the archive (:mod:`callvault.archive.reader`: the
manifests say which periods are archived, DuckDB reads that tenant's objects), merged in the same order
and with the same cursor; each row says which tier served it (``CallSummary.tier``, ``Page.tiers``). A
period that is attached is read from Postgres only, even when it is archived too (restored). Which
partitions are attached is read from the catalog in the read's own transaction (pipelined with the
query): a window the hot table covers never touches the store. Without a store, reads are exactly the
hot-only reads they always were.
"""

from __future__ import annotations

import json
from datetime import datetime
from uuid import UUID

from psycopg import sql

from callvault._async_reader import AsyncReader
from callvault._sync_reader import Reader
from callvault.config import Settings
from callvault.db import Conn
from callvault.plans import walk
from callvault.query_base import (
    ARCHIVE,
    ATTACHED_SQL,
    BOUNDS_SQL,
    DEFAULT_LIMIT,
    HOT,
    MAX_LIMIT,
    SUMMARY_COLUMNS,
    CallRecord,
    CallSummary,
    DayStat,
    Page,
    UsageRow,
    WindowRefused,
    attached_ranges,
    call_value,
    check_limit,
    check_window,
    count_sql,
    daily_sql,
    decode_cursor,
    encode_cursor,
    get_call_sql,
    max_window_of,
    window_params,
    window_sql,
)  # fmt: skip

__all__ = [
    "ARCHIVE", "ATTACHED_SQL", "BOUNDS_SQL", "DEFAULT_LIMIT", "HOT", "MAX_LIMIT", "SUMMARY_COLUMNS", "AsyncReader",
    "CallRecord", "CallSummary", "DayStat", "Page", "Reader", "UsageRow", "WindowRefused", "attached_ranges",
    "call_value", "check_limit", "check_window", "count_sql", "daily_sql", "decode_cursor", "encode_cursor",
    "explain_window", "get_call_sql", "max_window_of", "window_params", "window_sql",
]  # fmt: skip


def explain_window(
    conn: Conn, settings: Settings, tenant: UUID, since: datetime, until: datetime, limit: int = DEFAULT_LIMIT
) -> tuple[list[str], list[str]]:
    """(plan lines, partitions scanned) for the window query, as an application would run it."""
    params = {"tenant": tenant, "since": since, "until": until, "limit": limit}
    stmt = sql.SQL("EXPLAIN (COSTS OFF, FORMAT JSON) {}").format(window_sql(settings))
    raw = conn.cursor().execute(stmt, params, prepare=False).fetchone()
    assert raw is not None
    plan = raw[0] if not isinstance(raw[0], str) else json.loads(raw[0])
    scanned = sorted(set(walk(plan[0]["Plan"])[0]))
    text = [r[0] for r in conn.execute(sql.SQL("EXPLAIN (COSTS OFF) {}").format(window_sql(settings)), params)]
    return text, scanned
