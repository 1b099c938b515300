"""``callvault bench replication``: how far a mirror trails a primary that ingests at full speed.

A bench table is mirrored (``callvault mirror create``) into a fresh database of the same server,
once with ``--columns metadata`` and once with every column. For each, the ``Writer`` ingests into the
primary as fast as it can for N seconds while the slot is sampled every 0.25 s: replication lag in
seconds (``pg_stat_replication``'s replay lag; 0 when caught up) and in bytes, and the rows the mirror
holds. Reported: ingest rows/s, apply rows/s over the same window, their ratio, lag p50/p95/max, and
how long the mirror took to hold every row once the writer stopped. Both sides share the machine's
cores: on one box, apply competes with ingest.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from callvault import bootstrap, mirror
from callvault.bench import _tables, data
from callvault.bench._timing import server_now
from callvault.config import Settings
from callvault.db import connect, resolve_dsn
from callvault.ingest import Writer

SCHEMA = "callvault_bench"
TABLE = "r_part"
TARGET_DB = "callvault_bench_mirror"
MIRROR = "bench"
SAMPLE_S = 0.25


def _pct(samples: list[float], q: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def _reset(settings: Settings) -> tuple[Settings, str]:
    """A fresh bench table on the primary and a fresh target database (any earlier bench mirror dropped)."""
    s = settings.with_(schema=SCHEMA, table=TABLE)
    dsn = resolve_dsn(settings)
    target = make_conninfo(dsn, dbname=TARGET_DB)
    with connect(settings, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (TARGET_DB,)).fetchone()
        if exists:
            with contextlib.suppress(Exception):  # nothing left of an earlier run: fine
                mirror.drop(s, MIRROR, target_dsn=target, force=True)
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(TARGET_DB)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TARGET_DB)))
        for slot in conn.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE slot_name = %s", (mirror.PREFIX + MIRROR,)
        ).fetchall():
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot[0],))
        conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(mirror.PREFIX + MIRROR)))
    with connect(settings) as conn:
        _tables.forget(conn, s, TABLE)
        conn.commit()
        bootstrap.init(conn, s)
    with psycopg.connect(target, autocommit=True) as t:
        t.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
    return s, target


def _one(s: Settings, target: str, columns: str, seconds: float, progress: Callable[[str], None]) -> dict[str, Any]:
    progress(f"mirror --columns {columns}: creating")
    mirror.create(s, target, name=MIRROR, columns=columns)
    table = sql.Identifier(SCHEMA, TABLE)
    count_sql = sql.SQL("SELECT count(*) FROM {}").format(table)
    with psycopg.connect(target, autocommit=True) as t:
        deadline = time.monotonic() + 60
        while t.execute("SELECT count(*) FROM pg_subscription_rel WHERE srsubstate <> 'r'").fetchone() != (0,):
            if time.monotonic() > deadline:
                raise RuntimeError("the mirror's initial copy did not finish within 60 s")
            time.sleep(0.1)
        base = int(t.execute(count_sql).fetchone()[0])  # type: ignore[index]
    written = [0]
    stop = threading.Event()

    def ingest() -> None:
        now = server_now(s)
        calls = data.calls(100_000_000, tenants=50, span=timedelta(hours=12), now=now, seed=11)
        with Writer(s, batch_rows=5_000) as w:
            while not stop.is_set():
                chunk = [next(calls) for _ in range(5_000)]
                w.write_many(chunk)
                written[0] += w.flush().written

    progress(f"mirror --columns {columns}: ingesting for {seconds:.0f} s")
    lag_s: list[float] = []
    lag_b: list[int] = []
    writer = threading.Thread(target=ingest, daemon=True)
    with connect(s, autocommit=True) as prim, psycopg.connect(target, autocommit=True) as t:
        t0 = time.perf_counter()
        writer.start()
        while time.perf_counter() - t0 < seconds:
            time.sleep(SAMPLE_S)
            for slot in mirror.slots(prim):
                if slot.name == mirror.PREFIX + MIRROR:
                    lag_s.append(slot.lag_seconds or 0.0)
                    lag_b.append(slot.lag_bytes or 0)
        applied = int(t.execute(count_sql).fetchone()[0]) - base  # type: ignore[index]
        window = time.perf_counter() - t0
        stop.set()
        writer.join()
        ingested = written[0]
        t_stop = time.perf_counter()
        deadline = t_stop + 300
        while int(t.execute(count_sql).fetchone()[0]) - base < ingested:  # type: ignore[index]
            if time.perf_counter() > deadline:
                raise RuntimeError("the mirror did not catch up within 300 s of the writer stopping")
            time.sleep(0.1)
        catch_up = time.perf_counter() - t_stop
    mirror.drop(s, MIRROR, target_dsn=target)
    with psycopg.connect(target, autocommit=True) as t:
        t.execute(sql.SQL("TRUNCATE {}").format(table))
    return {
        "columns": columns,
        "ingested_rows": ingested,
        "ingest_rows_per_s": round(ingested / (t_stop - t0)),
        "apply_rows_per_s": round(applied / window),
        "apply_vs_ingest": round(applied / window / (ingested / (t_stop - t0)), 3) if ingested else None,
        "lag_s_p50": _pct(lag_s, 0.50),
        "lag_s_p95": _pct(lag_s, 0.95),
        "lag_s_max": round(max(lag_s), 3) if lag_s else None,
        "lag_bytes_max": max(lag_b) if lag_b else None,
        "catch_up_s": round(catch_up, 3),
        "samples": len(lag_s),
    }


def run(settings: Settings, seconds: float, progress: Callable[[str], None]) -> dict[str, Any]:
    """Both mirrors in turn; see the module docstring."""
    s, target = _reset(settings)
    info = conninfo_to_dict(target)
    out: dict[str, Any] = {"seconds": seconds, "target_database": info.get("dbname"), "mirrors": []}
    for columns in ("metadata", "all"):
        out["mirrors"].append(_one(s, target, columns, seconds, progress))
    return out
