"""``callvault bench erase``: erasing one caller of one tenant from a year of archived weeks.

Two tables get the same calls: ``weeks`` weekly partitions for ``tenants`` tenants, ``calls`` calls a
tenant-week among 1,000 callers each, the measured caller in 4 of the weeks. Both are archived to a local
store (a year of weeks: ``weeks * tenants`` objects). The first had its subject set before it was archived,
so its archive carries the subject filters (callvault.privacy.index); the second gets its subject only
after, like an archive made before the filters existed. Then one caller of one tenant is erased from each:
the receipt's objects read, rewritten and periods skipped, and the seconds, side by side — the filters'
effect as a ratio measured in the same process.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from psycopg import sql

from callvault import bootstrap
from callvault.archive.pipeline import archive
from callvault.bench import _tables
from callvault.bench._timing import server_now
from callvault.config import Settings, lifecycle_from
from callvault.db import connect
from callvault.errors import InvalidSetting
from callvault.privacy import erase as eraser
from callvault.privacy import subject as subjects

SCHEMA = "callvault_bench"
TENANT = "00000000-0000-4000-8000-00000000e001"
CALLER = "+15550009999"


def _fill(settings: Settings, weeks: int, tenants: int, calls: int) -> None:
    stmt = sql.SQL(
        """INSERT INTO {} (tenant_id, call_id, started_at, ended_at, duration_sec, transcript, metadata)
           SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(57344 + t), 12, '0'))::uuid, gen_random_uuid(),
                  w.lo + (g * interval '1 minute'), w.lo + (g * interval '1 minute') + interval '90 s', 90,
                  repeat('words of a transcript ', 40),
                  jsonb_build_object('caller', CASE WHEN t = 1 AND g = 7 AND w.n %% (%(weeks)s / 4) = 0
                                               THEN %(caller)s ELSE '+1555' || lpad((g %% 1000)::text, 7, '0') END)
           FROM (SELECT n, date_trunc('week', now()) - (n * interval '1 week') AS lo
                 FROM generate_series(1, %(weeks)s) n) w,
                generate_series(1, %(tenants)s) t, generate_series(1, %(calls)s) g"""
    ).format(sql.Identifier(settings.schema, settings.table))
    with connect(settings, autocommit=True) as conn:
        conn.execute(stmt, {"weeks": weeks, "tenants": tenants, "calls": calls, "caller": CALLER})


def _table(settings: Settings, name: str, weeks: int) -> Settings:
    s = settings.with_(schema=SCHEMA, table=name, lifecycle=lifecycle_from("weekly", 4, f"{weeks + 1} weeks"))
    with connect(settings) as conn:
        _tables.forget(conn, s, name)
        conn.commit()
        bootstrap.init(conn, s)
    return s


def run(settings: Settings, weeks: int = 52, tenants: int = 20, calls: int = 500) -> dict[str, Any]:
    """The figures (``--json``)."""
    if weeks < 4 or tenants < 1 or calls < 10:
        raise InvalidSetting("--weeks must be at least 4, --tenants at least 1 and --calls at least 10")
    out: dict[str, Any] = {"weeks": weeks, "tenants": tenants, "calls_per_tenant_week": calls}
    root = Path(tempfile.mkdtemp(prefix="callvault-bench-erase-"))
    try:
        for label, filters in (("with_filters", True), ("without_filters", False)):
            s = _table(settings, f"erase_{label}", weeks)
            _fill(s, weeks, tenants, calls)
            with connect(s, autocommit=True) as conn:
                if filters:
                    subjects.set_subject(conn, s, subjects.Subject.parse("caller"))
            store = (root / label).as_uri()
            (root / label).mkdir(mode=0o700)
            at = server_now(s) + timedelta(weeks=weeks + 2)
            t0 = time.perf_counter()
            rep = archive(s, store_url=store, at=at, new_store=True, spool=root / "spool")
            archive_s = time.perf_counter() - t0
            if not filters:
                with connect(s, autocommit=True) as conn:
                    subjects.set_subject(conn, s, subjects.Subject.parse("caller"))
            t0 = time.perf_counter()
            receipt = eraser.erase(s, TENANT, subject=CALLER, store_url=store)
            seconds = time.perf_counter() - t0
            removed = receipt.counts
            out[label] = {
                "archived_partitions": len(rep.partitions), "archive_seconds": round(archive_s, 2),
                "erase_seconds": round(seconds, 3),
                "objects_read": removed.get("archive_objects_read", 0),
                "objects_rewritten": removed.get("archive_objects_rewritten", 0),
                "periods_skipped": removed.get("archive_periods_skipped", 0),
                "rows_erased": removed.get("archive_rows", 0) + removed.get("hot_rows", 0),
            }  # fmt: skip
        w, wo = out["with_filters"], out["without_filters"]
        out["objects_read_ratio"] = round(w["objects_read"] / max(wo["objects_read"], 1), 3)
        out["erase_seconds_ratio"] = round(w["erase_seconds"] / max(wo["erase_seconds"], 1e-6), 3)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out
