"""``callvault bench keys``: callvault's keys against the seed's, same rows, same partitions.

Layouts (each a weekly-partitioned table made by pg_partman, loaded by server-side COPY of one file):

* ``seed``: ``PRIMARY KEY (id, started_at)`` + ``INDEX (tenant_id, started_at DESC)``; a call-id
  lookup has no index and scans every partition.
* ``seed_call_idx``: the seed plus ``INDEX (tenant_id, call_id)`` so call lookups are probes too
  (still not idempotent: nothing unique holds the call id).
* ``callvault``: ``PRIMARY KEY (tenant_id, started_at, id)`` + ``UNIQUE (tenant_id, call_id, started_at)``.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from psycopg import sql

from callvault import bootstrap, partman, schema
from callvault.bench import _tables, data
from callvault.bench._files import rows_file
from callvault.bench._timing import pct, server_now, timed
from callvault.config import Settings
from callvault.db import Conn, connect
from callvault.ingest import Writer
from callvault.ingest.validate import COLUMNS

SCHEMA = "callvault_bench"
QUERY_RUNS = 300  # per query and layout, after one warm-up pass

LAYOUTS: dict[str, list[str]] = {
    "seed": [
        "ALTER TABLE {t} ADD PRIMARY KEY (id, started_at)",
        "CREATE INDEX ON {t} (tenant_id, started_at DESC)",
    ],
    "seed_call_idx": [
        "ALTER TABLE {t} ADD PRIMARY KEY (id, started_at)",
        "CREATE INDEX ON {t} (tenant_id, started_at DESC)",
        "CREATE INDEX ON {t} (tenant_id, call_id)",
    ],
    "callvault": [
        "ALTER TABLE {t} ADD PRIMARY KEY (tenant_id, started_at, id) INCLUDE (call_id, ended_at, duration_sec)",
        "ALTER TABLE {t} ADD UNIQUE (tenant_id, call_id, started_at)",
    ],
}
WINDOW = (
    "SELECT call_id, started_at, duration_sec FROM {t} WHERE tenant_id = %s AND started_at >= %s "
    "AND started_at < %s ORDER BY started_at DESC LIMIT 100"
)
GET_CALL = "SELECT transcript FROM {t} WHERE tenant_id = %s AND call_id = %s"


@dataclass
class LayoutResult:
    load_rows_per_s: float
    index_mb: float
    window_p50_ms: float
    window_p95_ms: float
    get_call_p50_ms: float
    get_call_p95_ms: float


def _make_table(conn: Conn, settings: Settings, name: str, ddl: list[str]) -> sql.Identifier:
    t = sql.Identifier(SCHEMA, name)
    s = settings.with_(schema=SCHEMA, table=name)
    _tables.forget(conn, s, name)
    pm = partman.installed(conn)
    assert pm is not None
    conn.execute(schema.create_bare_table_sql(t))
    conn.execute(partman.create_parent_sql(s, pm, bootstrap.first_partition_start(s, server_now(s))))
    conn.execute(schema.drop_default_partition_sql(s))
    for stmt in ddl:
        conn.execute(sql.SQL(stmt).format(t=t))
    conn.commit()
    return t


def run(settings: Settings, rows: int, row_bytes: int = 1200) -> dict[str, Any]:
    now = server_now(settings)
    src = settings.with_(schema=SCHEMA, table="keys_source")
    with connect(settings) as conn:
        _tables.forget(conn, src, "keys_source")
        conn.commit()
        bootstrap.init(conn, src)
    span = timedelta(days=70)  # ten weekly partitions of history
    with Writer(src) as w:
        w.write_many(data.calls(rows, row_bytes=row_bytes, now=now, span=span))
    rng = random.Random(1)  # noqa: S311
    cols = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
    out: dict[str, Any] = {"rows": rows, "row_bytes": row_bytes, "layouts": {}}
    with connect(settings) as conn, rows_file(conn, sql.Identifier(SCHEMA, "keys_source")) as path:
        picks = conn.execute(
            sql.SQL("SELECT tenant_id, call_id, started_at FROM {} TABLESAMPLE SYSTEM (1) LIMIT %s").format(
                sql.Identifier(SCHEMA, "keys_source")
            ),
            (QUERY_RUNS,),
        ).fetchall()
        conn.commit()
        windows = [(t, s - timedelta(days=7), s) for t, _, s in picks]
        lookups = [(t, c) for t, c, _ in picks]
        rng.shuffle(lookups)
        for name, ddl in LAYOUTS.items():
            t = _make_table(conn, settings, f"keys_{name}", ddl)
            t0 = time.perf_counter()
            conn.execute(sql.SQL("COPY {} ({}) FROM {}").format(t, cols, sql.Literal(str(path))))
            conn.commit()
            load = rows / (time.perf_counter() - t0)
            conn.execute(sql.SQL("ANALYZE {}").format(t))
            conn.commit()
            idx = conn.execute(
                "SELECT coalesce(sum(pg_indexes_size(inhrelid)), 0) FROM pg_inherits WHERE inhparent = %s::regclass",
                (t.as_string(conn),),
            ).fetchone()
            w_times = timed(conn, sql.SQL(WINDOW).format(t=t), windows)
            g_times = timed(conn, sql.SQL(GET_CALL).format(t=t), lookups)
            conn.commit()
            out["layouts"][name] = LayoutResult(
                load_rows_per_s=round(load),
                index_mb=round(int(idx[0] if idx else 0) / 2**20, 1),
                window_p50_ms=pct(w_times, 50),
                window_p95_ms=pct(w_times, 95),
                get_call_p50_ms=pct(g_times, 50),
                get_call_p95_ms=pct(g_times, 95),
            ).__dict__
    return out
