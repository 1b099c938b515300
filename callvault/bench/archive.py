"""``callvault bench archive``: archive throughput vs raw ``COPY TO``, the archiver's memory, and what a
writer feels meanwhile.

Two weekly partitions ~12 weeks back are filled with N calls each (200 tenants, 1.2 KB rows, the
writer). Then, in the same run:

* **raw COPY TO** of the first: ``COPY (SELECT * FROM <partition>) TO STDOUT (FORMAT binary)``
  streamed to the client and discarded: the floor for reading the partition out of Postgres.
* **archive** of the first, alone on the machine, in a child process (``archive()``, the whole
  pipeline: detach CONCURRENTLY, export to Parquet/zstd, upload, read back + verify, drop) to the
  given store (default: a temporary directory): its seconds (as the archive reports them, without
  the child's start-up), ``archive_vs_raw_copy`` = raw seconds / archive seconds, and the child's peak
  RSS (``archiver_peak_rss_mb``: the archiver's own memory, not the bench's).
* **archive under writes**: the second partition archived the same way while a writer commits small
  batches into the *current* week; the writer's commit latency before (3 s; less below 300k rows) and
  during: p99 and max.
"""

from __future__ import annotations

import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from callvault import bootstrap, catalog
from callvault.archive.pipeline import archive
from callvault.bench import _tables, data
from callvault.bench._timing import pct
from callvault.config import Settings
from callvault.db import connect, resolve_dsn
from callvault.ingest import Writer
from callvault.plan import Retention

SCHEMA = "callvault_bench"
TABLE = "a_part"
TENANTS = 200
WRITER_BATCH = 20  # rows per commit of the concurrent writer
# The two filled weeks are the two oldest partitions init made (whatever the day: from the partition
# bounds, never "N weeks back from today"); each archive run is placed just past one's retention, so
# the first takes the oldest only and the second the next.
PAST = timedelta(days=1)  # a margin past the exact instant (pg_partman's rounding); a week is 7


def _setup(
    settings: Settings, rows: int, progress: Callable[[str], None]
) -> tuple[Settings, list[str], list[datetime]]:
    """A fresh bench table with its two oldest weeks filled; their names and the instants at which each is
    past retention (the archive runs' ``at``)."""
    s = settings.with_(schema=SCHEMA, table=TABLE)
    with connect(settings) as conn:
        _tables.forget(conn, s, TABLE)
        if catalog.meta_table_exists(conn, "archive_journal"):
            conn.execute("DELETE FROM callvault.archive_journal WHERE parent_table = %s", (s.qualified,))
        conn.commit()
        bootstrap.init(conn, s)
        parts = [r.info for r in catalog.list_partitions(conn, s) if not r.info.is_default]
        oldest = sorted((p.start, p.end, p.name) for p in parts if p.start is not None and p.end is not None)[:2]
    retention = s.lifecycle.retention
    assert retention is not None  # the default lifecycle keeps 90 days
    names, ats = [], []
    for week, end, name in oldest:
        progress(f"loading {rows:,} rows into the week of {week:%Y-%m-%d}")
        last = end - timedelta(minutes=1)  # inside the partition: its end is exclusive
        with Writer(s) as w:
            w.write_many(data.calls(rows, tenants=TENANTS, span=last - week - timedelta(minutes=1), now=last))
        names.append(name)
        ats.append(_past_retention(end, retention) + PAST)
    with connect(s, autocommit=True) as conn:
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(SCHEMA, TABLE)))
        # the load's dirty pages written out now, not by a checkpoint in the middle of a timed phase (the
        # first archive after a load was up to 1.6x slower than the second)
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            conn.execute("CHECKPOINT")
    return s, names, ats


def _past_retention(end: datetime, retention: Retention) -> datetime:
    """The first instant a partition ending at ``end`` is past ``retention`` (its cutoff reaches ``end``)."""
    at = end
    step = timedelta(days=1)
    while retention.cutoff(at) < end:  # retention.cutoff is monotonic: walk by days, then settle by the hour
        at += step
    while retention.cutoff(at - timedelta(hours=1)) >= end:
        at -= timedelta(hours=1)
    return at


def _baseline_seconds(rows: int) -> float:
    """How long the writer runs alone before the archive: 3 s at 300k rows and more (hundreds of commits
    for its p99), down to 0.5 s for a test's few thousand rows."""
    return min(3.0, max(0.5, rows / 100_000))


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
            sql.Identifier(self.s.schema, self.s.table), cols
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


def _archive_child(s: Settings, store_url: str, at: datetime) -> dict[str, Any]:
    """``archive()`` in a child process of its own: its report and peak RSS."""
    job = {"dsn": resolve_dsn(s), "schema": s.schema, "table": s.table, "store_url": store_url, "at": at.isoformat()}
    done = subprocess.run(
        [sys.executable, "-m", "callvault.bench.archive"], input=json.dumps(job), capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"the archive child failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _child() -> None:
    job = json.loads(sys.stdin.read())
    s = Settings(dsn=job["dsn"], schema=job["schema"], table=job["table"])
    report = archive(s, store_url=job["store_url"], at=datetime.fromisoformat(job["at"]))
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"report": report.to_dict(), "peak_rss_mb": round(peak_kb / 1024, 1)}))


def _partition(result: dict[str, Any], name: str) -> dict[str, Any]:
    found = [p for p in result["report"]["partitions"] if p["partition"] == name]
    if not found:
        raise RuntimeError(f"the archive run did not take {name}: {result['report']}")
    mine: dict[str, Any] = found[0]
    if mine["error"]:
        raise RuntimeError(mine["error"])
    return mine


def run(settings: Settings, rows: int, store_url: str | None, progress: Callable[[str], None]) -> dict[str, Any]:
    s, (first, second), (at_first, at_second) = _setup(settings, rows, progress)
    with connect(s) as conn:
        size_row = conn.execute("SELECT pg_total_relation_size(%s)", (f"{SCHEMA}.{first}",)).fetchone()
    table_bytes = int(size_row[0]) if size_row else 0
    progress("raw COPY TO")
    raw_s, raw_bytes = _raw_copy(s, first)
    with tempfile.TemporaryDirectory(prefix="callvault-bench-archive-") as tmp:
        url = store_url or Path(tmp).as_uri()
        progress("archive (alone)")
        alone = _archive_child(s, url, at_first)
        mine = _partition(alone, first)
        with connect(settings) as conn:
            steps = conn.execute(
                "SELECT step, seconds FROM callvault.archive_log WHERE parent_table = %s AND partition = %s "
                "ORDER BY id",
                (s.qualified, first),
            ).fetchall()
        progress("archive under writes")
        writer = _Writer(s)
        writer.start()
        time.sleep(_baseline_seconds(rows))  # the writer's baseline
        t_start = time.perf_counter()
        loaded = _archive_child(s, url, at_second)
        t_end = time.perf_counter()
        time.sleep(1)
        writer.stop.set()
        writer.join()
        under = _partition(loaded, second)
    before = [d for t, d in writer.samples if t < t_start]
    during = [d for t, d in writer.samples if t_start <= t <= t_end]
    archive_s = float(mine["seconds"])
    return {
        "rows": rows,
        "partition_bytes": table_bytes,
        "archive_bytes": mine["bytes"],
        "raw_copy_s": round(raw_s, 3),
        "raw_copy_rows_per_s": round(rows / raw_s),
        "raw_copy_mb_per_s": round(raw_bytes / raw_s / 1e6, 1),
        "archive_s": round(archive_s, 3),
        "archive_rows_per_s": round(rows / archive_s),
        "archive_mb_per_s": round(table_bytes / archive_s / 1e6, 1),
        "archive_vs_raw_copy": round(raw_s / archive_s, 3),
        "steps_s": {step: round(sec, 3) for step, sec in steps},
        "archiver_peak_rss_mb": alone["peak_rss_mb"],
        "store": alone["report"]["store"],
        "archive_under_writes_s": round(float(under["seconds"]), 3),
        "writer_commits_before": len(before),
        "writer_commits_during_archive": len(during),
        "writer_p99_ms_before": pct(before, 99) if len(before) > 1 else None,
        "writer_max_ms_before": round(max(before) * 1000, 2) if before else None,
        "writer_p99_ms_during": pct(during, 99) if len(during) > 1 else None,
        "writer_max_ms_during": round(max(during) * 1000, 2) if during else None,
    }


if __name__ == "__main__":  # the archive child of :func:`_archive_child`
    _child()
