"""``callvault bench adopt``: adopting an existing table while the application writes to it.

A plain ``calls`` table like a platform's (``bigserial`` id, ``created_at``, a text tenant column, four
columns of its own, ~1.2 KB rows over 13 weeks up to the server's now) is filled, then adopted by
``callvault adopt`` while a thread inserts through the old name at ``--writes-per-s`` (one INSERT a
transaction, as an application does). Reported: the longest time any of those INSERTs took (the write
stall), their p50/p99 before and during, rows moved per second and the total time, the extra disk the
database needed at its peak, and a baseline in the same run: the same rows copied offline by one
``INSERT ... SELECT`` into a plain table (what a maintenance-window migration costs, without the moves'
bookkeeping, batching or the application writing).
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import psycopg
from psycopg import sql

from callvault.adopt import Source, adopt
from callvault.bench import _tables
from callvault.config import Settings
from callvault.db import connect, resolve_dsn
from callvault.errors import InvalidSetting

SCHEMA = "callvault_bench"
SOURCE, TARGET, BASELINE = "adopt_src", "adopt_calls", "adopt_offline_copy"
TENANTS = 50


def _fill(conn: psycopg.Connection[Any], rows: int, weeks: int) -> None:
    src = sql.Identifier(SCHEMA, SOURCE)
    conn.execute(
        sql.SQL(
            """CREATE TABLE {} (id bigserial PRIMARY KEY, tenant text, created_at timestamptz NOT NULL DEFAULT now(),
               agent_id text, direction text, from_number text, cost_cents integer, transcript text)"""
        ).format(src)
    )
    step = 200_000
    for lo in range(0, rows, step):
        conn.execute(
            sql.SQL(
                """INSERT INTO {} (tenant, created_at, agent_id, direction, from_number, cost_cents, transcript)
                   SELECT '00000000-0000-4000-8000-' || lpad(to_hex(1 + i %% %(tenants)s), 12, '0'),
                          now() - (i * %(days)s::float8 / %(rows)s) * interval '1 day' - interval '1 minute',
                          'agent-' || i %% 40, CASE WHEN i %% 2 = 0 THEN 'inbound' ELSE 'outbound' END,
                          '+1555' || lpad((i %% 10000000)::text, 7, '0'), i %% 900,
                          repeat('a transcript line of a voice agent call. ', 26) || i
                   FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) i"""
            ).format(src),
            {"tenants": TENANTS, "days": weeks * 7, "rows": rows, "lo": lo + 1, "hi": min(lo + step, rows)},
        )
    conn.execute(sql.SQL("ANALYZE {}").format(src))


class _App(threading.Thread):
    """Inserts through the old name at ``per_s``, timing each INSERT (its own transaction)."""

    def __init__(self, dsn: str, per_s: float) -> None:
        super().__init__(daemon=True, name="bench-adopt-app")
        self.dsn, self.per_s = dsn, per_s
        self.samples: list[tuple[float, float]] = []  # (monotonic start, seconds)
        self.ids: list[int] = []  # every id the database said it committed
        self.stop = threading.Event()
        self.errors = 0

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as c:
            insert = sql.SQL(
                "INSERT INTO {} (tenant, created_at, agent_id, cost_cents, transcript) "
                "VALUES (%s, now() - interval '1 s', 'live', %s, 'a live call') RETURNING id"
            ).format(sql.Identifier(SCHEMA, SOURCE))
            i = 0
            while not self.stop.is_set():
                t0 = time.monotonic()
                try:
                    row = c.execute(insert, (f"00000000-0000-4000-8000-{1 + i % TENANTS:012x}", i)).fetchone()
                    if row is not None:
                        self.ids.append(int(row[0]))
                except psycopg.Error:
                    self.errors += 1
                took = time.monotonic() - t0
                self.samples.append((t0, took))
                i += 1
                time.sleep(max(0.0, 1 / self.per_s - took))


def _db_size(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute("SELECT pg_database_size(current_database())").fetchone()
        return int(row[0]) if row else 0


def _ms(samples: list[float], q: float) -> float | None:
    if not samples:
        return None
    if len(samples) < 2:
        return round(samples[0] * 1000, 2)
    return round(statistics.quantiles(samples, n=100, method="inclusive")[int(q) - 1] * 1000, 2)


def run(settings: Settings, rows: int = 2_000_000, weeks: int = 13, writes_per_s: float = 500.0,
        batch_rows: int = 5_000) -> dict[str, Any]:  # fmt: skip
    """The figures (``--json``)."""
    if rows < 1_000 or weeks < 1 or not 1 <= writes_per_s <= 5_000:
        raise InvalidSetting("--rows must be at least 1000, --weeks at least 1, --writes-per-s 1..5000")
    dsn = resolve_dsn(settings)
    target = settings.with_(schema=SCHEMA, table=TARGET)
    with connect(settings, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP VIEW IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA, SOURCE)))
        _tables.forget(conn, target, SOURCE, TARGET, BASELINE, f"{SOURCE}_cv_old")
        if _has_journal(conn):  # a run before: its adoption is finished, start anew
            conn.execute("DELETE FROM callvault.adoptions WHERE source = %s", (f"{SCHEMA}.{SOURCE}",))
        t0 = time.perf_counter()
        _fill(conn, rows, weeks)
        fill_s = time.perf_counter() - t0
        size = conn.execute("SELECT pg_total_relation_size(%s::regclass)", (f"{SCHEMA}.{SOURCE}",)).fetchone()
        source_bytes = int(size[0]) if size else 0
        t0 = time.perf_counter()
        conn.execute(sql.SQL("CREATE TABLE {} AS SELECT * FROM {}").format(
            sql.Identifier(SCHEMA, BASELINE), sql.Identifier(SCHEMA, SOURCE)))  # fmt: skip
        baseline_s = time.perf_counter() - t0
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(SCHEMA, BASELINE)))
        conn.execute("CHECKPOINT")
    before_size = _db_size(dsn)
    peak = [before_size]
    watching = threading.Event()

    def watch() -> None:
        while not watching.wait(0.5):
            peak[0] = max(peak[0], _db_size(dsn))

    watcher = threading.Thread(target=watch, daemon=True)
    app = _App(dsn, writes_per_s)
    app.start()
    time.sleep(3.0)  # the application's latency before
    began = time.monotonic()
    watcher.start()
    t0 = time.perf_counter()
    with connect(target) as conn:
        report = adopt(conn, target, Source(SCHEMA, SOURCE), time_column="created_at", tenant_column="tenant",
                       keep_old=True, batch_rows=batch_rows)  # fmt: skip
    total_s = time.perf_counter() - t0
    ended = time.monotonic()
    time.sleep(1.0)
    app.stop.set()
    app.join()
    watching.set()
    watcher.join()
    before = [s for at, s in app.samples if at < began]
    during = [s for at, s in app.samples if began <= at < ended]
    with connect(settings, autocommit=True) as conn:
        left = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(SCHEMA, TARGET))).fetchone()
        found = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE id = ANY(%s)").format(
            sql.Identifier(SCHEMA, TARGET)), (app.ids,)).fetchone()  # fmt: skip
    return {
        "rows": rows, "weeks": weeks, "source_mb": round(source_bytes / 2**20, 1),
        "fill_seconds": round(fill_s, 1), "adopt_seconds": round(total_s, 2),
        "moved": report.moved, "quarantined": report.quarantined,
        "rows_per_s_moved": round(report.moved / total_s) if total_s else None,
        "offline_copy_seconds": round(baseline_s, 2),
        "offline_copy_rows_per_s": round(rows / baseline_s) if baseline_s else None,
        "adopt_vs_offline_copy": round(baseline_s / total_s, 3) if total_s else None,
        "writes_per_s": writes_per_s, "app_inserts_during": len(during), "app_errors": app.errors,
        "app_insert_p50_ms_before": _ms(before, 50), "app_insert_p99_ms_before": _ms(before, 99),
        "app_insert_p50_ms_during": _ms(during, 50), "app_insert_p99_ms_during": _ms(during, 99),
        "longest_write_stall_ms": round(max(during, default=0.0) * 1000, 1),
        "extra_disk_mb_peak": round((peak[0] - before_size) / 2**20, 1),
        "target_rows_after": int(left[0]) if left else 0,
        "app_rows_acknowledged": len(app.ids),
        "app_rows_lost": len(app.ids) - (int(found[0]) if found else 0),
    }  # fmt: skip


def _has_journal(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass('callvault.adoptions') IS NOT NULL").fetchone()
    return bool(row and row[0])
