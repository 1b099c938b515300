"""``callvault bench metrics``: what one metrics collection costs at N partitions, and whether it slows ingest.

Makes a bench table with N weekly partitions (premade ahead) and some rows, then measures, in the same
process: a collection (:func:`callvault.metrics.snapshot`, p50/p95/max and its statement count) against
the baseline of one catalog round trip (the partition list with sizes, the least any status needs) and a
``count(*)`` of the table (the scan a collection must never be); then the Writer's batch latency
(p50/p99/max) with no collector, and with collections back to back on another connection.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from psycopg import sql

from callvault import bootstrap, catalog, metrics
from callvault.bench import _tables, data
from callvault.bench._timing import pct, server_now
from callvault.config import Settings, lifecycle_from
from callvault.db import connect
from callvault.errors import InvalidSetting
from callvault.ingest import Writer
from callvault.lifecycle import Interval
from callvault.maintain import maintain

SCHEMA = "callvault_bench"
TABLE = "m_part"
ROWS = 100_000
WRITE_S = 8.0  # seconds of ingest per phase (no collector / collector busy)


def _time(fn: Callable[[], object], samples: int) -> list[float]:
    fn()  # warm
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _data_end(s: Settings) -> datetime:
    """The end of the bench's two days of calls: three days into the current week, so that every row falls
    in the week's partition whatever the weekday (two days back from a Monday would be last week: no
    partition, every row quarantined)."""
    return Interval.WEEKLY.floor(server_now(s)) + timedelta(days=3)


MIN_BATCHES = 5


def _ingest(s: Settings, seconds: float, seed: int) -> list[float]:
    """Per-batch latency of a Writer flushing 1,000-row batches for ``seconds``."""
    lat: list[float] = []
    rows = data.calls(10_000_000, tenants=50, seed=seed, span=timedelta(days=2), now=_data_end(s))
    with Writer(s, metrics=False, batch_rows=1_000) as w:
        end = time.monotonic() + seconds
        while time.monotonic() < end or len(lat) < MIN_BATCHES:  # enough samples for percentiles, however slow
            for _ in range(1_000):
                w.write(next(rows))
            t0 = time.perf_counter()
            w.flush()
            lat.append(time.perf_counter() - t0)
    return lat


def run(
    settings: Settings, partitions: int, samples: int, progress: Callable[[str], None], seconds: float = WRITE_S
) -> dict[str, Any]:
    """The benchmark's figures (``--json``)."""
    if partitions < 10:
        raise InvalidSetting(f"--partitions {partitions}: use at least 10")
    s = settings.with_(schema=SCHEMA, table=TABLE, lifecycle=lifecycle_from("weekly", partitions - 3, "none"),
                       partition_warn=partitions * 10)  # fmt: skip
    progress(f"creating {s.qualified} with {partitions} weekly partitions")
    with connect(settings) as conn:
        _tables.forget(conn, s, TABLE)
        conn.commit()
        bootstrap.init(conn, s)
        made = len(catalog.list_partitions(conn, s))
    if made < partitions:  # how many pg_partman makes from "now" depends on the weekday: top up to the number asked
        s = s.with_(lifecycle=lifecycle_from("weekly", partitions - 3 + partitions - made, "none"))
        with connect(settings) as conn:
            bootstrap.init(conn, s)  # the new premake into pg_partman's config
        maintain(s)
    with Writer(s, metrics=False) as w:
        w.write_many(data.calls(ROWS, tenants=50, span=timedelta(days=2), now=_data_end(s)))
    with connect(s, autocommit=True) as conn:
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(SCHEMA, TABLE)))
        snap = metrics.snapshot(conn, s)
        progress(f"{len(snap.status.partitions)} partitions; timing {samples} collections")
        collect = _time(lambda: metrics.snapshot(conn, s), samples)
        catalog_q = _time(lambda: catalog.list_partitions(conn, s), samples)
        scan_q = _time(
            lambda: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(SCHEMA, TABLE))).fetchone(),
            max(5, samples // 5),
        )
    progress("writer batches with no collector")
    idle = _ingest(s, seconds, 1)
    stop = threading.Event()
    done = [0]

    def scrape() -> None:
        with connect(s, autocommit=True) as c:
            while not stop.is_set():
                metrics.snapshot(c, s)
                done[0] += 1

    progress("writer batches while collections run back to back")
    t = threading.Thread(target=scrape, daemon=True)
    t.start()
    try:
        busy = _ingest(s, seconds, 2)
    finally:
        stop.set()
        t.join()
    return {
        "partitions": len(snap.status.partitions),
        "rows": ROWS,
        "collect_statements": snap.statements,
        "collect_p50_ms": pct(collect, 50),
        "collect_p95_ms": pct(collect, 95),
        "collect_max_ms": round(max(collect) * 1000, 3),
        "catalog_round_trip_p50_ms": pct(catalog_q, 50),
        "collect_vs_catalog_round_trip": round(pct(collect, 50) / max(pct(catalog_q, 50), 1e-3), 2),
        "table_count_p50_ms": pct(scan_q, 50),
        "writer_batch_p50_ms_idle": pct(idle, 50),
        "writer_batch_p99_ms_idle": pct(idle, 99),
        "writer_batch_max_ms_idle": round(max(idle) * 1000, 3),
        "writer_batch_p50_ms_collecting": pct(busy, 50),
        "writer_batch_p99_ms_collecting": pct(busy, 99),
        "writer_batch_max_ms_collecting": round(max(busy) * 1000, 3),
        "writer_p99_collecting_vs_idle": round(pct(busy, 99) / max(pct(idle, 99), 1e-3), 2),
        "collections_during_ingest": done[0],
    }
