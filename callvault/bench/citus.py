"""``callvault bench citus``: single-node PostgreSQL beside a Citus cluster, same rows, same run.

1. Partition DDL against shard count: on the Citus coordinator, a weekly partition of a table
   distributed with 4, 8, 16, 32 and 64 shards is created (and dropped) ``DDL_SAMPLES`` times; median ms.
2. Ingest: N rows through the Writer into a fresh ``init``-ed table on each engine; rows/s and their ratio.
3. Reads: the tenant 7-day window (``window_sql``, LIMIT 100) for 200 sampled tenants/instants, warm;
   p50/p95/p99 on each engine, and how many Citus tasks the window runs (one: one tenant, one worker).

The single node is ``--dsn`` (default the embedded cluster); Citus is ``--citus-dsn`` (default the
``callvault dev up --citus`` coordinator). Both hold the bench tables in schema ``callvault_bench``.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import sql

from callvault import bootstrap, citus
from callvault.bench import _tables, data
from callvault.bench._timing import pct, server_now, timed
from callvault.config import Settings
from callvault.db import Conn, connect
from callvault.ingest import Writer
from callvault.plans import task_count
from callvault.query import window_sql

SCHEMA = "callvault_bench"
TENANTS = 200
SPAN = timedelta(days=20)
SHARD_COUNTS = (4, 8, 16, 32, 64)
DDL_SAMPLES = 5
SAMPLES = 200


def _ddl(conn: Conn, settings: Settings, shards: int) -> float:
    """Median seconds to create one weekly partition of a table distributed with ``shards`` shards."""
    parent = sql.Identifier(SCHEMA, f"ddl_{shards}")
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(parent))
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (tenant_id uuid NOT NULL, started_at timestamptz NOT NULL, id bigint, "
            "PRIMARY KEY (tenant_id, started_at, id)) PARTITION BY RANGE (started_at)"
        ).format(parent)
    )
    conn.execute(
        "SELECT create_distributed_table(%s, 'tenant_id', shard_count => %s, colocate_with => 'none')",
        (parent.as_string(), shards),
    )
    times = []
    base = datetime(2030, 1, 7, tzinfo=UTC)
    for i in range(DDL_SAMPLES):
        child = sql.Identifier(SCHEMA, f"ddl_{shards}_p{i}")
        start = base + timedelta(weeks=i)
        t0 = time.perf_counter()
        conn.execute(
            sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                child, parent, sql.Literal(start), sql.Literal(start + timedelta(weeks=1))
            )
        )
        times.append(time.perf_counter() - t0)
    conn.execute(sql.SQL("DROP TABLE {} CASCADE").format(parent))
    return statistics.median(times)


def _load(settings: Settings, rows: int, now: datetime, progress: Callable[[str], None], what: str) -> float:
    s = settings.with_(schema=SCHEMA, table="c_part")
    with connect(settings) as conn:
        _tables.forget(conn, s, "c_part")
        conn.commit()
        bootstrap.init(conn, s)
        conn.commit()
    progress(f"{what}: {rows:,} rows through the Writer")
    t0 = time.perf_counter()
    with Writer(s, metrics=False) as w:
        w.write_many(data.calls(rows, tenants=TENANTS, span=SPAN, now=now))
    took = time.perf_counter() - t0
    with connect(s, autocommit=True) as conn:
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(SCHEMA, "c_part")))
    return rows / took


def _windows(conn: Conn, s: Settings, now: datetime) -> list[dict[str, Any]]:
    rng = random.Random(11)  # noqa: S311 - benchmark sampling
    tenants = [r[0] for r in conn.execute(
        sql.SQL("SELECT DISTINCT tenant_id FROM {}").format(sql.Identifier(s.schema, s.table))
    )]  # fmt: skip
    out = []
    for _ in range(SAMPLES):
        until = now - timedelta(hours=rng.randint(0, 24 * 12))
        out.append({"tenant": rng.choice(tenants), "since": until - timedelta(days=7), "until": until, "limit": 100})
    return out


def _reads(settings: Settings, now: datetime) -> dict[str, Any]:
    s = settings.with_(schema=SCHEMA, table="c_part")
    with connect(s, autocommit=True) as conn:
        params = _windows(conn, s, now)
        lat = timed(conn, window_sql(s), params)
        raw = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) {}").format(window_sql(s)), params[0]).fetchone()
    assert raw is not None
    plan = raw[0] if not isinstance(raw[0], str) else json.loads(raw[0])
    return {
        "p50_ms": pct(lat, 50),
        "p95_ms": pct(lat, 95),
        "p99_ms": pct(lat, 99),
        "tasks": task_count(plan[0]["Plan"]),
    }


def run(single: Settings, distributed: Settings, rows: int, progress: Callable[[str], None]) -> dict[str, Any]:
    """The benchmark's figures (``--json``)."""
    now = server_now(single)
    with connect(distributed, autocommit=True) as conn:
        info = citus.preflight(conn, distributed)
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
        progress(f"partition DDL against shard count ({info.workers} workers)")
        ddl = {str(n): round(_ddl(conn, distributed, n) * 1000, 1) for n in SHARD_COUNTS}
    single_rate = _load(single, rows, now, progress, "single node")
    citus_rate = _load(distributed, rows, now, progress, f"Citus ({info.workers} workers)")
    progress("reads")
    single_reads, citus_reads = _reads(single, now), _reads(distributed, now)
    return {
        "rows": rows,
        "citus_version": info.version,
        "citus_workers": info.workers,
        "partition_ddl_ms_by_shard_count": ddl,
        "ingest_rows_per_s_single": round(single_rate),
        "ingest_rows_per_s_citus": round(citus_rate),
        "ingest_citus_vs_single": round(citus_rate / single_rate, 3),
        "window_single": single_reads,
        "window_citus": citus_reads,
        "window_p95_citus_vs_single": round(citus_reads["p95_ms"] / max(single_reads["p95_ms"], 1e-3), 2),
    }
