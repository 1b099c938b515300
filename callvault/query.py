"""Tenant-scoped reads that always pin the partition key with raw ``>=`` / ``<`` bounds."""

from __future__ import annotations

import json
from datetime import datetime
from uuid import UUID

from psycopg import sql

from callvault.config import Settings
from callvault.db import Conn


def window_sql(settings: Settings) -> sql.Composed:
    """A tenant's calls in [since, until), newest first: served by the primary key, pruned by the bounds."""
    return sql.SQL(
        "SELECT call_id, started_at, duration_sec FROM {} "
        "WHERE tenant_id = %(tenant)s AND started_at >= %(since)s AND started_at < %(until)s "
        "ORDER BY started_at DESC LIMIT %(limit)s"
    ).format(sql.Identifier(settings.schema, settings.table))


def explain_window(
    conn: Conn, settings: Settings, tenant: UUID, since: datetime, until: datetime, limit: int = 100
) -> tuple[list[str], list[str]]:
    """(plan lines, partitions scanned) for the window query, bounds bound client-side so the
    planner prunes at plan time exactly as an application query would."""
    stmt = sql.SQL("EXPLAIN (COSTS OFF, FORMAT JSON) {}").format(window_sql(settings))
    params = {"tenant": tenant, "since": since, "until": until, "limit": limit}
    cur = conn.cursor()
    raw = cur.execute(stmt, params, prepare=False).fetchone()
    assert raw is not None
    plan = raw[0] if not isinstance(raw[0], str) else json.loads(raw[0])
    scanned = sorted(set(_relations(plan[0]["Plan"])))
    text = [r[0] for r in conn.execute(sql.SQL("EXPLAIN (COSTS OFF) {}").format(window_sql(settings)), params)]
    return text, scanned


def _relations(node: dict[str, object]) -> list[str]:
    rels = [str(node["Relation Name"])] if "Relation Name" in node else []
    for child in node.get("Plans", []):  # type: ignore[attr-defined]
        rels += _relations(child)
    return rels
