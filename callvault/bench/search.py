"""``callvault bench search``: what transcript search and the usage rollup cost and give, one run.

The same N calls (~1.2 KB transcripts; one heavy tenant with ``heavy_share`` of them, the rest spread
over 50 tenants; a known phrase in 2% of the transcripts) are written by the sync ``Writer`` into three
fresh tables in schema ``callvault_bench``:

a. ``s_plain``: callvault's table without the usage rollup's triggers (the baseline);
b. ``s_usage``: with the rollup (what ``init`` gives);
c. ``s_words``: with the rollup and the full-text index alone (``search index --no-phrase``);
d. ``s_indexed``: with the rollup and both search indexes (``callvault search index``).

Rows per second of each, and the ratios b/a (the rollup's write cost) c/b and d/b (the search indexes'); a and b
also for "live" calls (the last two hours, in time order: each batch spans seconds, so the rollup adds
about one row per tenant and batch), the backfill being the worst case (a batch spans days). Then
``Reader.search`` for the heavy tenant over a 7-day and a ~90-day window (one page of 100, newest first;
a phrase and a words search; a rare phrase that fills no page), p50/p95 after a warm-up, on ``s_indexed``
and on ``s_usage`` (no search index: the tenant's rows of the window are read). Rows are placed from the
server's clock over the attached partitions of the last 88 days, so the bench runs on any day.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from psycopg import sql

from callvault import catalog
from callvault.bench import _tables, data
from callvault.bench._timing import pct, server_now
from callvault.bench.ingest import _fresh_table
from callvault.config import Settings
from callvault.db import connect
from callvault.ingest import Writer
from callvault.ingest.call import Call
from callvault.query import Reader
from callvault.search import index_names

SCHEMA = "callvault_bench"
TENANTS = 50
PHRASE = "asked for a refund"
RARE = "cancel my subscription today"
SPAN = timedelta(days=88)
SAMPLES = 30


def _calls(n: int, now: datetime, since: datetime, heavy_share: float, seed: int = 7) -> tuple[list[Call], uuid.UUID]:
    """n calls in time order over [since, now) and the heavy tenant (``heavy_share`` of them); 2% of the
    transcripts hold :data:`PHRASE`, one in 5,000 :data:`RARE`."""
    rng = random.Random(seed)  # noqa: S311 - synthetic data
    tenants = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(TENANTS)]
    pool = data.transcripts(1200, rng)
    step = (now - since) / max(n, 1)
    out = []
    for i in range(n):
        text = pool[i % len(pool)]
        if rng.random() < 0.02:
            cut = rng.randrange(0, max(1, len(text) - 40))
            text = f"{text[:cut]} {PHRASE} {text[cut + 20 :]}"
        if i % 5000 == 1:
            text = f"{RARE} {text}"
        tenant = tenants[0] if rng.random() < heavy_share else tenants[1 + rng.randrange(TENANTS - 1)]
        started = since + step * i
        out.append(Call(tenant_id=tenant, call_id=uuid.UUID(int=rng.getrandbits(128), version=4), started_at=started,
                        ended_at=started + timedelta(seconds=60), duration_sec=60, transcript=text,
                        metadata={"agent": f"agent-{i % 16}"}))  # fmt: skip
    return out, tenants[0]


def _ingest(s: Settings, calls: list[Call]) -> float:
    t0 = time.perf_counter()
    with Writer(s) as w:
        w.write_many(calls)
        w.flush()
    return time.perf_counter() - t0


def _searches(s: Settings, heavy: uuid.UUID, now: datetime, samples: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with connect(s) as conn:
        conn.execute("RESET row_security")
        conn.commit()
        reader = Reader(conn, s)
        for label, days in (("7d", 7), ("90d", 89)):
            since = now - timedelta(days=days)
            for name, text, mode in (("phrase", PHRASE, "phrase"), ("words", "refund asked", "words"),
                                     ("rare", RARE, "phrase")):  # fmt: skip
                for _ in range(3):  # warm-up
                    reader.search(heavy, text, since=since, until=now, limit=100, mode=mode)
                took: list[float] = []
                hits = 0
                for _ in range(samples):
                    t0 = time.perf_counter()
                    hits = len(reader.search(heavy, text, since=since, until=now, limit=100, mode=mode))
                    took.append(time.perf_counter() - t0)
                out[f"{name}_{label}_p50_ms"] = pct(took, 50)
                out[f"{name}_{label}_p95_ms"] = pct(took, 95)
                out[f"{name}_{label}_hits"] = hits
    return out


def _tables_gone(settings: Settings, s: Settings) -> None:
    with connect(settings) as conn:
        _tables.forget(conn, s, s.table)
        conn.commit()


def run(settings: Settings, rows: int, heavy_share: float = 0.3, progress: Callable[[str], None] = lambda _: None,
        samples: int = SAMPLES) -> dict[str, Any]:  # fmt: skip
    from callvault import search_index, usage

    now = server_now(settings)
    plain, counted, words, indexed = (_fresh_table(settings, n) for n in ("s_plain", "s_usage", "s_words", "s_indexed"))
    with connect(plain) as conn:
        for name in usage.TRIGGERS.values():  # the baseline: no rollup
            conn.execute(sql.SQL("DROP TRIGGER {} ON {}").format(sql.Identifier(name),
                                                                 sql.Identifier(SCHEMA, "s_plain")))  # fmt: skip
        conn.commit()
        starts = [lo for lo, _ in catalog.partition_bounds(conn, plain)]
    with connect(indexed, autocommit=True) as conn:
        search_index.build_indexes(conn, indexed)
        search_index.build_indexes(conn, words, phrase=False)  # the full-text index alone
    since = max(min(starts), now - SPAN) + timedelta(minutes=1)
    progress(f"making {rows:,} calls")
    calls, heavy = _calls(rows, now - timedelta(minutes=1), since, heavy_share)
    out: dict[str, Any] = {"rows": rows, "heavy_share": heavy_share, "tenants": TENANTS, "samples": samples}
    # live: the calls of the last two hours, as a platform writes them (a batch spans seconds: one rollup
    # row per tenant); then the backfill (a batch spans days: up to one rollup row per call), kept for searching
    live, _ = _calls(rows, now - timedelta(minutes=1), now - timedelta(hours=2), heavy_share, seed=8)
    for label, s in (("plain", plain), ("usage", counted)):
        progress(f"writing the live calls into {s.table}")
        out[f"ingest_live_{label}_rows_per_s"] = round(rows / _ingest(s, live))
        with connect(s) as conn:
            conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(SCHEMA, s.table)))
            conn.execute(sql.SQL("DELETE FROM callvault.usage WHERE parent_table = %s"), (s.qualified,))
            conn.commit()
    out["live_usage_vs_plain"] = round(out["ingest_live_usage_rows_per_s"] / out["ingest_live_plain_rows_per_s"], 3)
    del live
    for label, s in (("plain", plain), ("usage", counted), ("words_only", words), ("indexed", indexed)):
        progress(f"writing the backfill into {s.table}")
        took = _ingest(s, calls)
        out[f"ingest_{label}_rows_per_s"] = round(rows / took)
    _tables_gone(settings, words)
    with connect(settings, autocommit=True) as conn:  # what autovacuum does soon after a load: statistics, and
        for s in (counted, indexed):  # the GIN indexes' pending lists merged (gin_pending_list_limit, 4 MB each)
            conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(SCHEMA, s.table)))
    out["usage_vs_plain"] = round(out["ingest_usage_rows_per_s"] / out["ingest_plain_rows_per_s"], 3)
    out["words_only_vs_usage"] = round(out["ingest_words_only_rows_per_s"] / out["ingest_usage_rows_per_s"], 3)
    out["indexed_vs_usage"] = round(out["ingest_indexed_rows_per_s"] / out["ingest_usage_rows_per_s"], 3)
    with connect(indexed) as conn:
        row = conn.execute(
            "SELECT (SELECT sum(pg_relation_size(relid)) FROM pg_partition_tree(%s::regclass)), "
            "(SELECT sum(pg_relation_size(relid)) FROM pg_partition_tree(%s::regclass))",
            (f"{SCHEMA}.{index_names(indexed)['phrase']}",
             f"{SCHEMA}.{index_names(indexed)['words']}"),
        ).fetchone()  # fmt: skip
        assert row is not None
        out["trgm_index_mb"], out["fts_index_mb"] = round(int(row[0] or 0) / 1e6, 1), round(int(row[1] or 0) / 1e6, 1)
        out["heavy_tenant_rows"] = sum(1 for c in calls if c.tenant_id == heavy)
    progress("searching: with the indexes")
    out.update({f"indexed_{k}": v for k, v in _searches(indexed, heavy, now, samples).items()})
    progress("searching: without them")
    out.update({f"noindex_{k}": v for k, v in _searches(counted, heavy, now, samples).items()})
    return out
