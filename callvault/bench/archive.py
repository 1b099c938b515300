"""``callvault bench archive``: archive throughput vs raw ``COPY TO``, and what a writer feels meanwhile.

One weekly partition ~12 weeks back is filled with N calls (200 tenants, 1.2 KB rows, the writer).
Then, in the same process and on the same partition:

* **raw COPY TO**: ``COPY (SELECT * FROM <partition>) TO STDOUT (FORMAT binary)`` streamed to the
  client and discarded: the floor for reading the partition out of Postgres over the wire.
* **archive**: the full pipeline (detach CONCURRENTLY, fingerprint, export to Parquet/zstd, upload,
  read back + verify, drop) to the given store (default: a temporary directory).

Meanwhile a writer commits one small batch after another into the *current* week and records how long
each commit took; the report gives its worst and p99 latency during the archive, against the same
writer's worst latency before the archive started. That is the longest a concurrent writer waited
on a lock taken by detach/drop (plus ordinary commit time).
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from psycopg import sql

from callvault import bootstrap, catalog
from callvault.archive.pipeline import archive
from callvault.bench import data
from callvault.bench._timing import pct
from callvault.config import Settings
from callvault.db import connect
from callvault.ingest import Writer
from callvault.plan import Interval

SCHEMA = "callvault_bench"
TABLE = "a_part"
TENANTS = 200
WRITER_BATCH = 20  # rows per commit of the concurrent writer


def _setup(settings: Settings, rows: int, now: datetime, progress: Callable[[str], None]) -> tuple[Settings, str]:
    s = settings.with_(schema=SCHEMA, table=TABLE)
    with connect(settings) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA, TABLE)))
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE parent_table LIKE %s").format(
                sql.Identifier(settings.partman_schema, "part_config")
            ),
            (f"{SCHEMA}.%",),
        )
        if catalog.meta_table_exists(conn, "archive_journal"):
            conn.execute("DELETE FROM callvault.archive_journal WHERE parent_table = %s", (s.qualified,))
        conn.commit()
        bootstrap.init(conn, s)
    week = Interval.WEEKLY.floor(now) - timedelta(weeks=12)
    progress(f"loading {rows:,} rows into the week of {week:%Y-%m-%d}")
    with Writer(s) as w:
        w.write_many(data.calls(rows, tenants=TENANTS, span=timedelta(days=6, hours=23), now=week + timedelta(days=7)))
    with connect(s, autocommit=True) as conn:
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(SCHEMA, TABLE)))
    return s, f"{TABLE}_{Interval.WEEKLY.suffix(week)}"


def _raw_copy(s: Settings, partition: str) -> tuple[float, int]:
    """Seconds and bytes for a client-side binary COPY TO of the whole partition."""
    with connect(s) as conn, conn.cursor() as cur:
        query = sql.SQL("COPY (SELECT * FROM {}) TO STDOUT (FORMAT binary)").format(sql.Identifier(SCHEMA, partition))
        t0 = time.perf_counter()
        size = 0
        with cur.copy(query) as copy:
            for block in copy:
                size += len(block)
        return time.perf_counter() - t0, size


class _Writer(threading.Thread):
    """Commits small batches into the current week, recording each commit's latency."""

    def __init__(self, s: Settings) -> None:
        super().__init__(daemon=True)
        self.s = s
        self.stop = threading.Event()
        self.samples: list[tuple[float, float]] = []  # (start time, seconds)

    def run(self) -> None:
        calls = data.calls(10_000_000, tenants=TENANTS, span=timedelta(days=1), seed=9)
        cols = sql.SQL(", ").join(
            map(sql.Identifier, ("tenant_id", "call_id", "started_at", "ended_at", "duration_sec", "transcript"))
        )
        stmt = sql.SQL("INSERT INTO {} ({}) VALUES (%s, %s, %s, %s, %s, %s)").format(
            sql.Identifier(SCHEMA, TABLE), cols
        )
        with connect(self.s) as conn:
            while not self.stop.is_set():
                batch = [next(calls) for _ in range(WRITER_BATCH)]
                t0 = time.perf_counter()
                with conn.cursor() as cur:
                    cur.executemany(
                        stmt,
                        [
                            (c.tenant_id, c.call_id, c.started_at, c.ended_at, c.duration_sec, c.transcript)
                            for c in batch
                        ],
                    )
                conn.commit()
                self.samples.append((t0, time.perf_counter() - t0))


def run(settings: Settings, rows: int, store_url: str | None, progress: Callable[[str], None]) -> dict[str, Any]:
    now = datetime.now(UTC)
    s, partition = _setup(settings, rows, now, progress)
    with connect(s) as conn:
        size_row = conn.execute("SELECT pg_total_relation_size(%s)", (f"{SCHEMA}.{partition}",)).fetchone()
    table_bytes = int(size_row[0]) if size_row else 0
    progress("raw COPY TO")
    raw_s, raw_bytes = _raw_copy(s, partition)
    writer = _Writer(s)
    writer.start()
    time.sleep(3)  # the writer's baseline
    progress("archive")
    with tempfile.TemporaryDirectory(prefix="callvault-bench-archive-") as tmp:
        url = store_url or Path(tmp).as_uri()
        t_start = time.perf_counter()
        report = archive(s, store_url=url, at=now + timedelta(weeks=2))
        t_end = time.perf_counter()
    time.sleep(1)
    writer.stop.set()
    writer.join()
    mine = next(p for p in report.partitions if p.partition == partition)
    if mine.error:
        raise RuntimeError(mine.error)
    before = [d for t, d in writer.samples if t < t_start]
    during = [d for t, d in writer.samples if t_start <= t <= t_end]
    with connect(settings) as conn:
        steps = conn.execute(
            "SELECT step, seconds FROM callvault.archive_log WHERE parent_table = %s AND partition = %s ORDER BY id",
            (s.qualified, partition),
        ).fetchall()
    archive_s = mine.seconds
    return {
        "rows": rows,
        "partition_bytes": table_bytes,
        "archive_bytes": mine.bytes,
        "raw_copy_s": round(raw_s, 3),
        "raw_copy_rows_per_s": round(rows / raw_s),
        "raw_copy_mb_per_s": round(raw_bytes / raw_s / 1e6, 1),
        "archive_s": round(archive_s, 3),
        "archive_rows_per_s": round(rows / archive_s),
        "archive_mb_per_s": round(table_bytes / archive_s / 1e6, 1),
        "archive_vs_raw_copy": round(raw_s / archive_s, 3),
        "steps_s": {step: round(sec, 3) for step, sec in steps},
        "store": report.store,
        "writer_commits_during_archive": len(during),
        "writer_max_ms_before": round(max(before) * 1000, 2) if before else None,
        "writer_max_ms_during": round(max(during) * 1000, 2) if during else None,
        "writer_p99_ms_during": pct(during, 99) if len(during) > 1 else None,
    }
