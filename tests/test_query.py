"""The tenant query layer: windows refused, keyset pagination under concurrent inserts, pruning."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql

from callvault.config import Settings
from callvault.errors import InvalidSetting
from callvault.ingest import Writer
from callvault.query import AsyncReader, Reader, WindowRefused, check_window, decode_cursor, encode_cursor, window_sql
from tests.helpers import make_calls, run

NOW = datetime.now(UTC)
WEEK = timedelta(days=7)


@pytest.fixture
def loaded(dsn: str) -> tuple[str, list[dict[str, object]]]:
    run("init", "--dsn", dsn)
    calls = make_calls(1000, tenants=1, start=NOW - timedelta(days=6), spacing_s=300, seed=3)
    calls += make_calls(500, tenants=3, start=NOW - timedelta(days=6), spacing_s=600, seed=4)
    with Writer(dsn) as w:
        w.write_many(calls)
    return dsn, calls


@pytest.mark.parametrize(
    ("since", "until", "needle"),
    [
        (None, None, "unbounded"),
        (datetime(2026, 1, 1), None, "timezone-aware"),
        (NOW, NOW - WEEK, "empty window"),
        (NOW - timedelta(days=400), NOW, "wider than"),
    ],
)
def test_windows_are_refused_with_a_reason(since: datetime | None, until: datetime | None, needle: str) -> None:
    with pytest.raises(WindowRefused, match=needle):
        check_window(since, until, timedelta(days=90))


def test_cursor_round_trip_and_bad_cursor() -> None:
    ts = datetime(2026, 5, 4, 12, 30, tzinfo=UTC)
    assert decode_cursor(encode_cursor(ts, 42)) == (ts, 42)
    with pytest.raises(InvalidSetting, match="cursor"):
        decode_cursor("not-a-cursor")


def test_unbounded_read_refused_before_any_sql(loaded: tuple[str, list[dict[str, object]]]) -> None:
    dsn, calls = loaded
    with psycopg.connect(dsn) as conn:
        reader = Reader(conn)
        with pytest.raises(WindowRefused):
            reader.recent_calls(calls[0]["tenant_id"])  # type: ignore[arg-type]
        with pytest.raises(WindowRefused):
            reader.count_calls(calls[0]["tenant_id"], since=NOW - timedelta(days=365))  # type: ignore[arg-type]


def test_pagination_is_exact_while_a_writer_inserts(loaded: tuple[str, list[dict[str, object]]]) -> None:
    dsn, calls = loaded
    tenant = calls[0]["tenant_id"]
    original = {c["call_id"] for c in calls if c["tenant_id"] == tenant}
    assert len(original) == 1000
    stop = threading.Event()

    def insert_more() -> None:
        with Writer(dsn, flush_interval=0.01) as w:
            i = 0
            while not stop.is_set():
                start = NOW - timedelta(days=5, seconds=i)
                w.write({"tenant_id": tenant, "call_id": uuid.uuid4(), "started_at": start})
                i += 1
                if i % 20 == 0:
                    w.flush()

    t = threading.Thread(target=insert_more)
    t.start()
    seen: list[uuid.UUID] = []
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            reader = Reader(conn)
            cursor = None
            while True:
                page = reader.recent_calls(tenant, since=NOW - WEEK, until=NOW, limit=100, cursor=cursor)  # type: ignore[arg-type]
                seen += [c.call_id for c in page.calls]
                assert all(a.started_at >= b.started_at for a, b in zip(page.calls, page.calls[1:], strict=False))
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
    finally:
        stop.set()
        t.join()
    assert len(seen) == len(set(seen)), "a row was repeated"
    assert original <= set(seen), "a row was missed"


def test_get_call_with_and_without_started_at(loaded: tuple[str, list[dict[str, object]]]) -> None:
    dsn, calls = loaded
    c = calls[123]
    with psycopg.connect(dsn) as conn:
        reader = Reader(conn)
        a = reader.get_call(c["tenant_id"], c["call_id"], c["started_at"])  # type: ignore[arg-type]
        b = reader.get_call(c["tenant_id"], c["call_id"])  # type: ignore[arg-type]
        assert a is not None and a == b and a.transcript == c["transcript"]
        assert reader.get_call(c["tenant_id"], uuid.uuid4()) is None  # type: ignore[arg-type]
        assert reader.get_call(uuid.uuid4(), c["call_id"]) is None  # type: ignore[arg-type]  # another tenant: nothing


def test_counts_and_daily_stats(loaded: tuple[str, list[dict[str, object]]]) -> None:
    dsn, calls = loaded
    tenant = calls[0]["tenant_id"]
    with psycopg.connect(dsn) as conn:
        conn.execute("SET timezone TO 'UTC'")
        reader = Reader(conn)
        assert reader.count_calls(tenant, since=NOW - WEEK, until=NOW) == 1000  # type: ignore[arg-type]
        days = reader.daily_stats(tenant, since=NOW - WEEK, until=NOW)  # type: ignore[arg-type]
        assert sum(d.calls for d in days) == 1000
        assert sum(d.total_duration_sec for d in days) == 1000 * 30


def test_async_reader(loaded: tuple[str, list[dict[str, object]]]) -> None:
    dsn, calls = loaded
    tenant = calls[0]["tenant_id"]

    async def go() -> int:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            reader = AsyncReader(conn)
            total, cursor = 0, None
            while True:
                page = await reader.recent_calls(tenant, since=NOW - WEEK, until=NOW, cursor=cursor)  # type: ignore[arg-type]
                total += len(page.calls)
                if not page.next_cursor:
                    return total
                cursor = page.next_cursor

    assert asyncio.run(go()) == 1000


def _scanned(plan: dict[str, object]) -> tuple[set[str], int]:
    rels: set[str] = set()
    removed = 0
    stack = [plan]
    while stack:
        node = stack.pop()
        if "Relation Name" in node:
            rels.add(str(node["Relation Name"]))
        removed += int(node.get("Subplans Removed", 0))  # type: ignore[call-overload]
        stack += node.get("Plans", [])  # type: ignore[arg-type]
    return rels, removed


@pytest.mark.single_node("PostgreSQL's generic plans; Citus plans prepared statements itself (one task per tenant)")
def test_generic_plan_of_prepared_window_query_is_still_pruned(loaded: tuple[str, list[dict[str, object]]]) -> None:
    dsn, calls = loaded
    tenant = calls[0]["tenant_id"]
    text = window_sql(Settings()).as_string()
    for name in ("tenant", "since", "until", "limit"):
        text = text.replace(f"%({name})s", {"tenant": "$1", "since": "$2", "until": "$3", "limit": "$4"}[name])
    with psycopg.connect(dsn, autocommit=True) as conn:
        total = conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'public.call_logs'::regclass"
        ).fetchone()[0]
        conn.execute("SET plan_cache_mode = force_generic_plan")  # the worst case psycopg can hit
        conn.execute(sql.SQL("PREPARE w(uuid, timestamptz, timestamptz, int) AS {}").format(sql.SQL(text)))
        args = (tenant, NOW - timedelta(days=2), NOW, 100)
        cur = psycopg.ClientCursor(conn)  # EXECUTE is a utility statement: bind its arguments client-side
        for _ in range(6):
            cur.execute("EXECUTE w(%s, %s, %s, %s)", args).fetchall()
        raw = cur.execute("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE w(%s, %s, %s, %s)", args).fetchone()[0]
    plan = raw if not isinstance(raw, str) else json.loads(raw)
    rels, removed = _scanned(plan[0]["Plan"])
    assert removed >= total - 2, f"generic plan not pruned at executor start: {rels}"
