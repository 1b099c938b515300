"""callvault maintain / plan: premake, retention (detach, keep), locks, concurrency, bad input."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from callvault.config import Settings
from callvault.errors import AlreadyRunning, CallvaultError, NotInitialised
from callvault.maintain import LOCK_NAMESPACE, maintain
from tests.helpers import run, run_json, ts


def attached(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'public.call_logs'::regclass ORDER BY 1"
    ).fetchall()
    return [r[0] for r in rows]


def iso_at(weeks: float) -> str:
    return (datetime.now(UTC) + timedelta(weeks=weeks)).isoformat()


def test_fresh_init_needs_no_maintenance(dsn: str) -> None:
    run("init", "--dsn", dsn)
    plan = run_json("plan", "--dsn", dsn)
    assert plan["create"] == [] and plan["retire"] == []
    report = run_json("maintain", "--dsn", dsn)
    assert report["created"] == [] and report["detached"] == [] and report["dropped"] == []
    st = run_json("status", "--dsn", dsn)
    assert st["last_maintenance"] is not None


def test_moving_the_clock_creates_and_detaches(dsn: str, conn: psycopg.Connection) -> None:
    run("init", "--dsn", dsn)
    before = attached(conn)
    at = iso_at(6)
    plan = run_json("plan", "--dsn", dsn, "--at", at)
    assert len(plan["create"]) >= 5 and len(plan["retire"]) >= 5
    report = run_json("maintain", "--dsn", dsn, "--at", at)
    assert sorted(report["created"]) == sorted(p["name"] for p in plan["create"])
    assert sorted(report["detached"]) == sorted(p["name"] for p in plan["retire"])
    assert report["dropped"] == []  # retention detaches and keeps: nothing dropped before it is archived
    after = attached(conn)
    assert set(report["detached"]) <= set(before) and not set(report["detached"]) & set(after)
    for name in report["detached"]:  # the data is still there, as a plain table
        assert conn.execute("SELECT to_regclass(%s)", (f"public.{name}",)).fetchone() != (None,)
    replan = run_json("plan", "--dsn", dsn, "--at", at)
    assert replan["create"] == [] and replan["retire"] == []
    st = run_json("status", "--dsn", dsn, "--at", at)
    assert ts(st["premake_horizon"]) >= ts(at) + timedelta(weeks=4)
    assert {d["name"] for d in st["detached_awaiting_archive"]} == set(report["detached"])
    assert st["healthy"], st["problems"]


def test_pg_partman_retention_detaches_expired_weeks(dsn: str, conn: psycopg.Connection) -> None:
    run("init", "--dsn", dsn, "--retention", "60 days")
    # shorten retention as an operator would: the next real maintenance run detaches the old weeks
    run("init", "--dsn", dsn, "--retention", "14 days")
    cutoff = datetime.now(UTC) - timedelta(days=14)
    report = run_json("maintain", "--dsn", dsn)
    assert len(report["detached"]) >= 5
    st = run_json("status", "--dsn", dsn)
    assert all(ts(p["to"]) >= cutoff for p in st["partitions"])


def test_maintain_before_init_is_a_clear_error(dsn: str) -> None:
    res = run("maintain", "--dsn", dsn, ok=False)
    assert res.exit_code == NotInitialised.exit_code
    assert "run `callvault init` first" in res.stderr


def test_second_concurrent_run_exits_already_running(dsn: str, conn: psycopg.Connection) -> None:
    run("init", "--dsn", dsn)
    key = conn.execute("SELECT hashtext('public.call_logs')").fetchone()[0]
    conn.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_NAMESPACE, key))
    res = run("maintain", "--dsn", dsn, ok=False)
    assert res.exit_code == AlreadyRunning.exit_code == 75
    assert "already running" in res.stderr

    def release() -> None:
        time.sleep(0.5)
        conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_NAMESPACE, key))

    t = threading.Thread(target=release)
    t.start()
    started = time.monotonic()
    report = maintain(Settings(dsn=dsn), wait=True)
    t.join()
    assert time.monotonic() - started >= 0.4 and report.attempts == 1


def test_pg_partman_busy_elsewhere_is_reported(dsn: str, conn: psycopg.Connection) -> None:
    run("init", "--dsn", dsn)
    conn.execute("SELECT pg_advisory_lock(hashtext('pg_partman run_maintenance'))")
    with pytest.raises(AlreadyRunning, match="pg_partman"):
        maintain(Settings(dsn=dsn))


def test_concurrent_runs_do_not_corrupt_state(dsn: str, conn: psycopg.Connection) -> None:
    run("init", "--dsn", dsn)
    results: list[object] = []

    def one() -> None:
        try:
            results.append(maintain(Settings(dsn=dsn), at=datetime.now(UTC) + timedelta(weeks=8)))
        except AlreadyRunning as exc:
            results.append(exc)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    plan = run_json("plan", "--dsn", dsn, "--at", iso_at(8))
    assert plan["create"] == [] and plan["retire"] == []
    names = attached(conn)
    assert len(names) == len(set(names))


def test_lock_budget_retries_then_succeeds(realtime_dsn: str) -> None:
    dsn = realtime_dsn  # lock_timeout must fire: a server on the real clock
    run("init", "--dsn", dsn)
    holder = psycopg.connect(dsn)
    holder.execute("LOCK TABLE call_logs IN ACCESS EXCLUSIVE MODE")

    def release() -> None:
        time.sleep(0.8)
        holder.rollback()

    t = threading.Thread(target=release)
    t.start()
    report = maintain(Settings(dsn=dsn, lock_timeout_ms=100), at=datetime.now(UTC) + timedelta(weeks=2))
    t.join()
    holder.close()
    assert report.attempts > 1 and report.created


def test_lock_budget_gives_up_with_clear_error(realtime_dsn: str) -> None:
    dsn = realtime_dsn  # lock_timeout must fire: a server on the real clock
    run("init", "--dsn", dsn)
    with psycopg.connect(dsn) as holder:
        holder.execute("LOCK TABLE call_logs IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(CallvaultError, match="lock budget"):
            maintain(Settings(dsn=dsn, lock_timeout_ms=50), at=datetime.now(UTC) + timedelta(weeks=2))


def test_rows_stranded_in_default_partition(dsn: str, conn: psycopg.Connection) -> None:
    run("init", "--dsn", dsn, "--default-partition")
    far = datetime.now(UTC) + timedelta(weeks=7)
    conn.execute(
        "INSERT INTO call_logs (tenant_id, call_id, started_at) VALUES (%s, %s, %s)",
        (uuid.uuid4(), uuid.uuid4(), far),
    )
    st = run_json("status", "--dsn", dsn)
    assert st["default_rows"] == 1 and not st["healthy"]
    health = run("health", "--dsn", dsn, ok=False)
    assert health.exit_code == 3 and "default partition holds 1 rows" in health.stderr
    plan = run_json("plan", "--dsn", dsn, "--at", iso_at(5))
    assert plan["default_rows"] == 1
    res = run("maintain", "--dsn", dsn, "--at", iso_at(5), ok=False)
    assert res.exit_code == 1 and "default partition" in res.stderr
