"""``callvault bench query``: read latency on the partitioned table vs a flat table, same rows.

Loads N rows with the writer (200 tenants, time-ordered over the last 87 days: 13+ weekly
partitions), copies them into a flat table with the same indexes, then measures warm p50/p95/p99 of:
the tenant 7-day window (LIMIT 100), ``get_call`` with and without ``started_at``, a 1-day aggregate,
the window through :class:`~callvault.query.Reader` (a transaction with the tenant set) as the owner
and as a role row-level security binds,
and the ``date_trunc`` anti-pattern beside its pinned rewrite — on both tables, and the window again
while a writer ingests >= 10k rows/s into the partitioned table. Statements run as an application
runs them: psycopg prepares after 5 executions, so most samples use prepared (possibly generic) plans.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from psycopg import sql

from callvault import bootstrap
from callvault.bench import _tables, data
from callvault.bench._timing import pct, server_now, timed
from callvault.config import Settings
from callvault.db import Conn, connect
from callvault.ingest import Writer
from callvault.query import Reader, count_sql, daily_sql, get_call_sql, window_sql

SCHEMA = "callvault_bench"
SPAN = timedelta(days=87)  # inside 90-day retention, over 13+ weekly partitions
TENANTS = 200
SAMPLES = 400  # timed executions per query and table, after warm-up
BACKGROUND_RATE = 12_000  # rows/s the background writer aims for during the "under ingest" run
APP_ROLE = "callvault_bench_app"  # an RLS-bound reader (no BYPASSRLS, not the owner), like callvault_app
DATE_TRUNC_SQL = "SELECT count(*) FROM {t} WHERE tenant_id = %(tenant)s AND date_trunc('day', started_at) = %(day)s"


def _load(settings: Settings, rows: int, now: datetime, progress: Callable[[str], None]) -> tuple[Settings, Settings]:
    part = settings.with_(schema=SCHEMA, table="q_part")
    flat = sql.Identifier(SCHEMA, "q_flat")
    with connect(settings) as conn:
        _tables.forget(conn, part, "q_part", "q_flat")
        conn.commit()
        bootstrap.init(conn, part)
    progress(f"loading {rows:,} rows (writer)")
    with Writer(part) as w:
        w.write_many(data.calls(rows, tenants=TENANTS, span=SPAN, now=now))
    progress("copying into the flat table")
    with connect(settings) as conn:
        src = sql.Identifier(SCHEMA, "q_part")
        conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS)").format(flat, src))
        conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM {}").format(flat, src))
        conn.execute(
            sql.SQL(
                "ALTER TABLE {} ADD PRIMARY KEY (tenant_id, started_at, id) INCLUDE (call_id, ended_at, duration_sec)"
            ).format(flat)
        )
        conn.execute(sql.SQL("ALTER TABLE {} ADD UNIQUE (tenant_id, call_id, started_at)").format(flat))
        conn.commit()
        conn.autocommit = True
        for t in (src, flat):
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(t))
    return part, settings.with_(schema=SCHEMA, table="q_flat")


def _params(conn: Conn, part: Settings, now: datetime) -> dict[str, list[dict[str, Any]]]:
    rng = random.Random(5)  # noqa: S311 - benchmark sampling
    picks = conn.execute(
        sql.SQL("SELECT tenant_id, call_id, started_at FROM {} TABLESAMPLE SYSTEM (2) LIMIT %s").format(
            sql.Identifier(part.schema, part.table)
        ),
        (SAMPLES * 2,),
    ).fetchall()
    rng.shuffle(picks)
    picks = picks[:SAMPLES]
    windows, lookups, days = [], [], []
    for tenant, call, started in picks:
        until = started + timedelta(hours=rng.randint(0, 72))
        windows.append({"tenant": tenant, "since": until - timedelta(days=7), "until": until, "limit": 100})
        lookups.append({"tenant": tenant, "call": call, "started_at": started})
        day = started.replace(hour=0, minute=0, second=0, microsecond=0)
        days.append({"tenant": tenant, "since": day, "until": day + timedelta(days=1), "day": day})
    return {"window": windows, "lookup": lookups, "day": days}


def _measure(conn: Conn, s: Settings, p: dict[str, list[dict[str, Any]]]) -> dict[str, list[float]]:
    t = sql.Identifier(s.schema, s.table)
    return {
        "window": timed(conn, window_sql(s), p["window"]),
        "get_call": timed(conn, get_call_sql(s, pinned=True), p["lookup"]),
        "get_call_no_ts": timed(conn, get_call_sql(s, pinned=False), p["lookup"]),
        "agg_day": timed(conn, daily_sql(s), p["day"]),
        "day_pinned": timed(conn, count_sql(s), p["day"]),
        "date_trunc": timed(conn, sql.SQL(DATE_TRUNC_SQL).format(t=t), p["day"]),
    }


def _reader_window(
    conn: Conn, s: Settings, windows: list[dict[str, Any]], pipeline: bool = False
) -> tuple[list[float], int]:
    """Seconds per ``Reader.recent_calls`` (its own transaction, tenant set, then the window), after a
    warm-up pass; and the rows the timed pass returned."""
    reader = Reader(conn, s, max_window=timedelta(days=8), pipeline=pipeline)
    out, rows = [], 0
    for timing in (False, True):
        for w in windows:
            t0 = time.perf_counter()
            page = reader.recent_calls(w["tenant"], since=w["since"], until=w["until"], limit=w["limit"])
            if timing:
                out.append(time.perf_counter() - t0)
                rows += len(page.calls)
    return out, rows


def _rls(conn: Conn, s: Settings, windows: list[dict[str, Any]]) -> dict[str, Any]:
    """The window through the Reader as the table's owner (RLS bypassed) and as an RLS-bound role."""
    owner, owner_rows = _reader_window(conn, s, windows)
    if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (APP_ROLE,)).fetchone():
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN NOBYPASSRLS").format(sql.Identifier(APP_ROLE)))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(s.schema), sql.Identifier(APP_ROLE)))
    conn.execute(
        sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(s.schema, s.table), sql.Identifier(APP_ROLE))
    )
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(APP_ROLE)))
    conn.execute("SET row_security TO on")  # callvault's own connections turn it off (see db.connect)
    try:
        app, app_rows = _reader_window(conn, s, windows)
        piped, _ = _reader_window(conn, s, windows, pipeline=True)
    finally:
        conn.execute("RESET ROLE")
        conn.execute("SET row_security TO off")
    out: dict[str, Any] = {f"reader_window_p{q}_ms": pct(owner, q) for q in (50, 95, 99)}
    out.update({f"reader_window_rls_p{q}_ms": pct(app, q) for q in (50, 95, 99)})
    out.update({f"reader_window_rls_pipeline_p{q}_ms": pct(piped, q) for q in (50, 95, 99)})
    out["rls_rows_equal"] = owner_rows == app_rows  # the policy filtered nothing the query wanted
    return out


class _Background:
    """A writer ingesting fresh rows (started_at ~ now) at BACKGROUND_RATE until stopped."""

    def __init__(self, part: Settings, now: datetime) -> None:
        self.part, self.now, self.stop, self.rows = part, now, threading.Event(), 0
        self.thread = threading.Thread(target=self._run)
        self.seconds = 0.0

    def _run(self) -> None:
        chunk = 1_000
        t0 = time.perf_counter()
        with Writer(self.part) as w:
            source = data.calls(10_000_000, tenants=TENANTS, span=timedelta(hours=1), now=self.now, seed=99)
            while not self.stop.is_set():
                w.write_many(next(source) for _ in range(chunk))
                self.rows += chunk
                ahead = self.rows / BACKGROUND_RATE - (time.perf_counter() - t0)
                if ahead > 0:
                    time.sleep(ahead)
        self.seconds = time.perf_counter() - t0


def run(settings: Settings, rows: int, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    now = server_now(settings)
    part, flat = _load(settings, rows, now, progress)
    out: dict[str, Any] = {"rows": rows, "tenants": TENANTS, "samples": SAMPLES}
    with connect(settings) as conn:
        conn.autocommit = True
        row = conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = %s::regclass", (f"{SCHEMA}.q_part",)
        ).fetchone()
        out["partitions"] = int(row[0]) if row else 0
        p = _params(conn, part, now)
        progress("measuring: partitioned")
        for name, samples in _measure(conn, part, p).items():
            out.update({f"{name}_p{q}_ms": pct(samples, q) for q in (50, 95, 99)})
        progress("measuring: through the Reader, as the owner and as an RLS-bound app role")
        out.update(_rls(conn, part, p["window"]))
        progress("measuring: flat")
        for name, samples in _measure(conn, flat, p).items():
            out.update({f"flat_{name}_p{q}_ms": pct(samples, q) for q in (50, 95, 99)})
        progress("measuring: partitioned, under ingest")
        bg = _Background(part, now)
        bg.thread.start()
        time.sleep(1.0)  # let the background writer reach its rate
        under = timed(conn, window_sql(part), p["window"] * 3)
        bg.stop.set()
        bg.thread.join()
        out.update({f"window_p{q}_under_ingest_ms": pct(under, q) for q in (50, 95, 99)})
        out["ingest_rows_per_s_during"] = round(bg.rows / bg.seconds) if bg.seconds else 0
        out["postgres_version"] = (conn.execute("SHOW server_version").fetchone() or ["?"])[0]
    return out


def plot(results: list[dict[str, Any]], path: str) -> None:
    """Window and get_call p95 vs rows, partitioned vs flat (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["rows"] for r in results]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in (
        (axes[0], "window", "tenant 7-day window, p95"),
        (axes[1], "date_trunc", "1-day count, p95"),
    ):
        ax.plot(sizes, [r[f"{key}_p95_ms"] for r in results], "o-", label=f"partitioned ({key})")
        ax.plot(sizes, [r[f"flat_{key}_p95_ms"] for r in results], "s--", label=f"flat ({key})")
        if key == "date_trunc":
            ax.plot(sizes, [r["day_pinned_p95_ms"] for r in results], "^-", label="partitioned (pinned bounds)")
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("rows")
        ax.set_ylabel("ms")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
