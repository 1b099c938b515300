"""``callvault bench scale``: callvault at a tenant's real size, in one run.

* **The table**: ``--rows`` calls of ~1.2 KB (20M: 25 GB+) over 13 weeks up to the server's now, 200
  tenants, one heavy (``--heavy-share``, 30 % of the rows), the oldest full week holding
  ``ARCHIVE_WEEK_SHARE`` of them (the week archived below: >= 5 GB at full size). Filled server-side
  (``INSERT ... SELECT`` over ``generate_series``: the data is made where it lands, no client round trip),
  two sessions at once (2 cores), in chunks.
* **The same with 500 partitions**: a daily table (``--daily-partitions``), the newest weeks of the same
  generator (capped at ``DAILY_ROWS_MAX`` rows so both tables fit a disk), to compare per-read cost as
  partitions multiply: p99s, planning time, and prepared statements (generic vs custom plans).
* **Reads**, as an RLS-bound application role through the :class:`~callvault.query.Reader`: the 7-day
  window (newest first, one page) of a light and of the heavy tenant, ``get_call``, a 90-day
  ``daily_stats``; p50/p95/p99 idle and while a Writer ingests (>= 10k rows/s aimed).
* **Operations**: ``maintain``, ``status``, ``health``, ``audit`` and one metrics collection, timed on each
  table.
* **Archive** of the big week: seconds, the archiver's peak RSS (a child process), a concurrent writer's
  commit p99 before/during, against two baselines of the same partition in the same run: raw
  ``COPY ... TO STDOUT (FORMAT binary)`` read and discarded, and what a person scripts by hand
  (``psql \\copy ... | zstd`` into a file, no verification).
* **Disk**: bytes per call hot (heap, TOAST, indexes) and archived.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from psycopg import sql

from callvault import bootstrap, catalog
from callvault.bench import _tables
from callvault.bench import archive as ab
from callvault.bench import query as qb
from callvault.bench._timing import pct, server_now
from callvault.config import Settings, lifecycle_from
from callvault.db import Conn, connect, resolve_dsn
from callvault.errors import CallvaultError, InvalidSetting
from callvault.query import Reader

SCHEMA = "callvault_bench"
WEEKLY, DAILY = "scale_weekly", "scale_daily"
TENANTS = 200
ARCHIVE_WEEK_SHARE = 0.2  # of the rows, in the oldest full week: the archived week is >= 5 GB at 20M rows
DAILY_ROWS_MAX = 5_000_000
CHUNK = 250_000  # rows per INSERT ... SELECT
SAMPLES = 300
TRANSCRIPT = "the caller asked about their invoice and the agent explained the charges. "  # ~75 bytes


def _fill_sql(table: sql.Identifier) -> sql.Composed:
    """Rows ``lo..hi`` of ``n``: tenant 1 takes ``heavy`` of them (every k-th row), the others the rest in
    turn; the first ``share`` of the rows fall in [week_lo, week_hi) (the week to archive), the others
    spread over [rest_lo, rest_hi); ~1.2 KB each (a 1.1 KB transcript, metadata)."""
    return sql.SQL(
        """INSERT INTO {} (tenant_id, call_id, started_at, ended_at, duration_sec, transcript, metadata)
SELECT t, gen_random_uuid(), ts, ts + interval '95 s', 95, repeat(%(text)s, 15) || i,
       jsonb_build_object('agent', 'agent-' || (i %% 40),
                          'caller', '+1555' || lpad((i %% 9999999)::text, 7, '0'))
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) i,
     LATERAL (SELECT CASE WHEN i %% %(k)s = 0 THEN '00000000-0000-4000-8000-000000000001'::uuid
                          ELSE ('00000000-0000-4000-8000-' || lpad(to_hex(2 + i %% %(others)s), 12, '0'))::uuid
                     END AS t,
                     CASE WHEN i <= %(split)s
                          THEN %(week_lo)s::timestamptz + (i::float8 / greatest(%(split)s, 1))
                               * (%(week_hi)s::timestamptz - %(week_lo)s::timestamptz - interval '1 s')
                          ELSE %(rest_lo)s::timestamptz + ((i - %(split)s)::float8 / greatest(%(n)s - %(split)s, 1))
                               * (%(rest_hi)s::timestamptz - %(rest_lo)s::timestamptz) END AS ts) x"""
    ).format(table)  # fmt: skip


def _fill(settings: Settings, table: str, n: int, heavy: float, week: tuple[datetime, datetime] | None,
          rest: tuple[datetime, datetime], progress: Callable[[str], None]) -> float:  # fmt: skip
    """Fill ``table`` with ``n`` rows, two sessions at once; seconds taken."""
    stmt = _fill_sql(sql.Identifier(SCHEMA, table))
    split = int(n * ARCHIVE_WEEK_SHARE) if week else 0
    week = week or rest
    params = {
        "text": TRANSCRIPT, "k": max(round(1 / heavy), 1), "others": TENANTS - 1, "split": split,
        "week_lo": week[0], "week_hi": week[1], "rest_lo": rest[0], "rest_hi": rest[1], "n": n,
    }  # fmt: skip
    done = [0]
    lock = threading.Lock()

    def chunk(lo: int) -> None:
        with connect(settings, autocommit=True) as conn:
            conn.execute("SET synchronous_commit TO off")
            conn.execute(stmt, {**params, "lo": lo, "hi": min(lo + CHUNK - 1, n)})
        with lock:
            done[0] += min(CHUNK, n - lo + 1)
            progress(f"{table}: {done[0]:,} of {n:,} rows")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(chunk, range(1, n + 1, CHUNK)))
    with connect(settings, autocommit=True) as conn:
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(SCHEMA, table)))
    return time.perf_counter() - t0


def _table(settings: Settings, name: str, interval: str, retention: str) -> Settings:
    s = settings.with_(schema=SCHEMA, table=name, lifecycle=lifecycle_from(interval, 4, retention))
    with connect(settings) as conn:
        _tables.forget(conn, s, name)
        if catalog.meta_table_exists(conn, "archive_journal"):
            conn.execute("DELETE FROM callvault.archive_journal WHERE parent_table = %s", (s.qualified,))
        conn.commit()
        bootstrap.init(conn, s, roles=True)
    return s


def _reads(conn: Conn, s: Settings, now: datetime, light: str, heavy: str) -> dict[str, list[float]]:
    """Samples (seconds) of each read, as the RLS-bound app role through the Reader."""
    rng = __import__("random").Random(7)
    windows = []
    for i in range(SAMPLES):
        until = now - timedelta(hours=rng.randint(0, 24 * 60))
        windows.append((light if i % 2 else heavy, until - timedelta(days=7), until))
    picks = conn.execute(
        sql.SQL("SELECT tenant_id, call_id, started_at FROM {} TABLESAMPLE SYSTEM (1) LIMIT %s").format(
            sql.Identifier(s.schema, s.table)), (SAMPLES,)).fetchall()  # fmt: skip
    app = qb.APP_ROLE
    if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (app,)).fetchone():
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN NOBYPASSRLS").format(sql.Identifier(app)))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(s.schema), sql.Identifier(app)))
    conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(s.schema, s.table), sql.Identifier(app)))
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(app)))
    conn.execute("SET row_security TO on")
    out: dict[str, list[float]] = {"window_light": [], "window_heavy": [], "get_call": [], "daily_90d": []}
    try:
        reader = Reader(conn, s, max_window=timedelta(days=91))
        for timing in (False, True):  # a warm-up pass, then the timed one
            for tenant, since, until in windows:
                t0 = time.perf_counter()
                reader.recent_calls(tenant, since=since, until=until, limit=100)
                if timing:
                    out["window_light" if tenant == light else "window_heavy"].append(time.perf_counter() - t0)
            for tenant, call, started in picks:
                t0 = time.perf_counter()
                reader.get_call(tenant, call, started_at=started)
                if timing:
                    out["get_call"].append(time.perf_counter() - t0)
        for tenant in (light, heavy) * 10:
            t0 = time.perf_counter()
            reader.daily_stats(tenant, since=now - timedelta(days=90), until=now)
            out["daily_90d"].append(time.perf_counter() - t0)
    finally:
        conn.execute("RESET ROLE")
        conn.execute("SET row_security TO off")
    return out


def _plans(conn: Conn, s: Settings, now: datetime, tenant: str) -> dict[str, Any]:
    """Planning time of the window query, and a prepared window with generic vs custom plans."""
    from callvault.query import window_sql

    params = {"tenant": tenant, "since": now - timedelta(days=7), "until": now, "limit": 100}
    stmt = window_sql(s).as_string(conn)
    plan = conn.execute("EXPLAIN (ANALYZE, SUMMARY, FORMAT JSON) " + stmt, params).fetchone()
    out: dict[str, Any] = {"planning_ms": round(plan[0][0]["Planning Time"], 3) if plan else None}
    for mode in ("force_custom_plan", "force_generic_plan"):
        conn.execute("SELECT set_config('plan_cache_mode', %s, false)", (mode,))
        conn.execute("DEALLOCATE ALL")
        prepared = stmt.replace("%(tenant)s", "$1").replace("%(since)s", "$2").replace("%(until)s", "$3")
        prepared = prepared.replace("%(limit)s", "$4")
        conn.execute("PREPARE cv_scale_w(uuid, timestamptz, timestamptz, bigint) AS " + prepared)
        samples = []
        for i in range(60):
            until = now - timedelta(hours=i)
            t0 = time.perf_counter()
            execute = sql.SQL("EXECUTE cv_scale_w({}, {}, {}, 100)").format(  # a utility statement: no $n
                sql.Literal(tenant), sql.Literal(until - timedelta(days=7)), sql.Literal(until)
            )
            conn.execute(execute).fetchall()
            samples.append(time.perf_counter() - t0)
        out[f"prepared_{mode.split('_')[1]}_p99_ms"] = pct(samples[10:], 99)
        conn.execute("DEALLOCATE ALL")
    conn.execute("RESET plan_cache_mode")
    return out


def _ops(s: Settings) -> dict[str, float]:
    """Seconds of each operation on the table."""
    from callvault import commands
    from callvault import metrics as m

    out = {}
    steps: tuple[tuple[str, Callable[[], object]], ...] = (
        ("maintain", lambda: commands.maintain(s)), ("status", lambda: commands.status(s)),
        ("health", lambda: commands.health(s)), ("audit", lambda: commands.audit(s)),
        ("metrics_collect", lambda: m.render(s)),
    )  # fmt: skip
    for name, fn in steps:
        t0 = time.perf_counter()
        with contextlib.suppress(CallvaultError):  # an unhealthy verdict (exit 3) is still a timing
            fn()
        out[f"{name}_s"] = round(time.perf_counter() - t0, 3)
    return out


def _hand_script(s: Settings, partition: str, dest: Path) -> tuple[float, int]:
    """What a person scripts: psql's \\copy piped to zstd into a file (no verification). Seconds, bytes."""
    dsn = resolve_dsn(s)
    copy = f"\\copy (SELECT * FROM {SCHEMA}.{partition}) TO STDOUT"
    t0 = time.perf_counter()
    with subprocess.Popen(["psql", "-X", "-q", "-d", dsn, "-c", copy], stdout=subprocess.PIPE) as p:
        subprocess.run(["zstd", "-q", "-f", "-T1", "-o", str(dest)], stdin=p.stdout, check=True)
    seconds = time.perf_counter() - t0
    return seconds, dest.stat().st_size


def _sizes(conn: Conn, s: Settings, rows: int) -> dict[str, Any]:
    row = conn.execute(
        """SELECT sum(pg_relation_size(c.oid)), sum(coalesce(pg_total_relation_size(c.reltoastrelid), 0)),
                  sum(pg_indexes_size(c.oid))
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass""",
        (f"{s.schema}.{s.table}",),
    ).fetchone()
    heap, toast, idx = (int(v or 0) for v in (row or (0, 0, 0)))
    per = max(rows, 1)
    return {"hot_bytes_per_call": round((heap + toast + idx) / per), "heap_bytes_per_call": round(heap / per),
            "toast_bytes_per_call": round(toast / per), "index_bytes_per_call": round(idx / per)}  # fmt: skip


def run(settings: Settings, rows: int = 20_000_000, heavy_share: float = 0.3, daily_partitions: int = 500,
        progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:  # fmt: skip
    """The figures (``--json``)."""
    if rows < 20_000 or not 0 < heavy_share < 1 or daily_partitions < 30:
        raise InvalidSetting("--rows must be at least 20000, --heavy-share in (0, 1), --daily-partitions >= 30")
    now = server_now(settings)
    out: dict[str, Any] = {"rows": rows, "tenants": TENANTS, "heavy_share": heavy_share, "at": now.isoformat()}
    weekly = _table(settings, WEEKLY, "weekly", "90 days")
    with connect(weekly) as conn:
        parts = sorted((p.info.start, p.info.end, p.info.name) for p in catalog.list_partitions(conn, weekly)
                       if p.info.start is not None and p.info.end is not None)  # fmt: skip
    big = parts[0]  # the oldest partition init made: the week archived below
    rest = (big[1], now - timedelta(minutes=5))
    out["fill_seconds"] = round(_fill(weekly, WEEKLY, rows, heavy_share, (big[0], big[1]), rest, progress), 1)
    daily = _table(settings, DAILY, "daily", f"{daily_partitions - 5} days")
    daily_rows = min(rows, DAILY_ROWS_MAX)
    out["daily_rows"] = daily_rows
    span = timedelta(days=min(90, daily_partitions - 10))  # inside the daily table's retention
    _fill(daily, DAILY, daily_rows, heavy_share, None, (now - span, now - timedelta(minutes=5)), progress)
    light, heavy = "00000000-0000-4000-8000-000000000002", "00000000-0000-4000-8000-000000000001"
    for label, s in (("weekly", weekly), ("daily", daily)):
        progress(f"reads on the {label} table")
        with connect(s, autocommit=True) as conn:
            n = conn.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = %s::regclass",
                             (f"{SCHEMA}.{s.table}",)).fetchone()  # fmt: skip
            out[f"{label}_partitions"] = int(n[0]) if n else 0
            idle = _reads(conn, s, now, light, heavy)
            bg = qb._Background(s, now)
            bg.thread.start()
            time.sleep(1.0)
            under = _reads(conn, s, now, light, heavy)
            bg.stop.set()
            bg.thread.join()
            out[f"{label}_ingest_rows_per_s_during"] = round(bg.rows / bg.seconds) if bg.seconds else 0
            for name, samples in idle.items():
                out.update({f"{label}_{name}_p{q}_ms": pct(samples, q) for q in (50, 95, 99)})
            for name, samples in under.items():
                out.update({f"{label}_{name}_under_ingest_p{q}_ms": pct(samples, q) for q in (50, 95, 99)})
            out.update({f"{label}_{k}": v for k, v in _plans(conn, s, now, light).items()})
        out.update({f"{label}_{k}": v for k, v in _ops(s).items()})
    out["p99_window_500_vs_18"] = round(out["daily_window_light_p99_ms"] / out["weekly_window_light_p99_ms"], 2)
    with connect(weekly, autocommit=True) as conn:
        out.update(_sizes(conn, weekly, rows))
        size = conn.execute("SELECT pg_total_relation_size(%s)", (f"{SCHEMA}.{big[2]}",)).fetchone()
        count = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(SCHEMA, big[2]))
        week_rows = conn.execute(count).fetchone()
    out["archive_week_bytes"] = int(size[0]) if size else 0
    out["archive_week_rows"] = int(week_rows[0]) if week_rows else 0
    progress("archive baselines: raw binary COPY, psql \\copy | zstd")
    raw_s, _ = ab._raw_copy(weekly, big[2])
    root = Path(tempfile.mkdtemp(prefix="callvault-bench-scale-"))
    try:
        hand_s, hand_bytes = _hand_script(weekly, big[2], root / "week.copy.zst")
        os.unlink(root / "week.copy.zst")
        progress("archive under writes")
        retention = weekly.lifecycle.retention
        assert retention is not None
        writer = ab._Writer(weekly)
        writer.start()
        time.sleep(3)
        t_start = time.perf_counter()
        store = root / "store"
        store.mkdir(mode=0o700)
        result = ab._archive_child(weekly, store.as_uri(), ab._past_retention(big[1], retention) + ab.PAST)
        t_end = time.perf_counter()
        time.sleep(1)
        writer.stop.set()
        writer.join()
        mine = ab._partition(result, big[2])
        archived_bytes = sum(f.stat().st_size for f in store.rglob("*.parquet"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    before = [d for t, d in writer.samples if t < t_start]
    during = [d for t, d in writer.samples if t_start <= t <= t_end]
    archive_s = float(mine["seconds"])
    out.update({
        "archive_s": round(archive_s, 2), "archiver_peak_rss_mb": result["peak_rss_mb"],
        "raw_copy_s": round(raw_s, 2), "hand_copy_zstd_s": round(hand_s, 2), "hand_copy_zstd_bytes": hand_bytes,
        "archive_vs_raw_copy": round(raw_s / archive_s, 3), "archive_vs_hand_copy_zstd": round(hand_s / archive_s, 3),
        "writer_p99_ms_before_archive": pct(before, 99) if len(before) > 1 else None,
        "writer_p99_ms_during_archive": pct(during, 99) if len(during) > 1 else None,
        "archived_bytes_per_call": round(archived_bytes / max(out["archive_week_rows"], 1)),
    })  # fmt: skip
    return out


def plot(result: dict[str, Any], path: str) -> None:
    """The read p99s (18 vs 500 partitions, idle vs under ingest) and the archive against its baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reads = ("window_light", "window_heavy", "get_call", "daily_90d")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    width = 0.2
    for k, (label, suffix) in enumerate((("weekly", ""), ("weekly", "_under_ingest"), ("daily", ""),
                                         ("daily", "_under_ingest"))):  # fmt: skip
        values = [result.get(f"{label}_{r}{suffix}_p99_ms") or 0 for r in reads]
        parts = result.get(f"{label}_partitions")
        name = f"{parts} partitions" + (", under ingest" if suffix else "")
        axes[0].bar([i + k * width for i in range(len(reads))], values, width, label=name)
    axes[0].set_xticks([i + 1.5 * width for i in range(len(reads))], [r.replace("_", " ") for r in reads])
    axes[0].set_yscale("log")  # a 90-day aggregate beside millisecond reads
    axes[0].set_ylabel("p99 ms (log)")
    axes[0].set_title(f"reads as the app role ({result['rows']:,} calls)")
    axes[0].legend(fontsize=8)
    names = ("callvault archive (verified)", "psql \\copy | zstd (no verify)", "raw binary COPY")
    secs = (result["archive_s"], result["hand_copy_zstd_s"], result["raw_copy_s"])
    axes[1].barh(names, secs)
    axes[1].set_xlabel("seconds")
    axes[1].set_title(f"one week, {result['archive_week_bytes'] / 2**30:.1f} GB, {result['archive_week_rows']:,} calls")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
