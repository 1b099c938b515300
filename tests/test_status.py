"""status / health: fields, states, and each unhealthy reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg

from callvault.config import Settings
from callvault.db import connect
from callvault.monitor import collect
from tests.helpers import run, run_json


def test_status_json_fields(dsn: str) -> None:
    run("init", "--dsn", dsn)
    st = run_json("status", "--dsn", dsn)
    for key in ("partitions", "premake_horizon", "default_rows", "partition_count", "partman_version",
                "retention_cutoff", "oldest_partition_start", "last_maintenance", "total_bytes"):  # fmt: skip
        assert key in st
    states = {p["state"] for p in st["partitions"]}
    assert states == {"past", "current", "future"}
    assert sum(p["state"] == "current" for p in st["partitions"]) == 1
    assert all({"name", "from", "to", "rows_estimate", "bytes"} <= set(p) for p in st["partitions"])
    human = run("status", "--dsn", dsn).stdout
    assert "premake horizon" in human and "healthy" in human


def test_health_ok_after_init(dsn: str) -> None:
    run("init", "--dsn", dsn)
    assert run("health", "--dsn", dsn).stdout.startswith("ok:")


def test_health_reasons_when_maintenance_stopped(dsn: str) -> None:
    run("init", "--dsn", dsn)
    s = Settings(dsn=dsn)
    with connect(s) as conn:
        later = collect(conn, s, now=datetime.now(UTC) + timedelta(weeks=5))
    assert any("premake horizon" in p for p in later.problems)
    assert any("retention is behind" in p for p in later.problems)


def test_partition_count_warning(dsn: str) -> None:
    run("init", "--dsn", dsn)
    res = run("health", "--dsn", dsn, "--partition-warn", "5", ok=False)
    assert res.exit_code == 3 and "warning threshold 5" in res.stderr


def test_status_rows_estimate_after_analyze(dsn: str, conn: psycopg.Connection) -> None:
    run("init", "--dsn", dsn)
    conn.execute(
        "INSERT INTO call_logs (tenant_id, call_id, started_at) "
        "SELECT gen_random_uuid(), gen_random_uuid(), now() - (g || ' minutes')::interval "
        "FROM generate_series(1, 500) g"
    )
    conn.execute("ANALYZE call_logs")
    st = run_json("status", "--dsn", dsn)
    assert sum(p["rows_estimate"] or 0 for p in st["partitions"]) == 500
    assert st["total_bytes"] > 0


def test_health_sees_holes_and_maintain_fills_them(dsn: str, conn: psycopg.Connection) -> None:
    run("init", "--dsn", dsn)
    names = [p["name"] for p in run_json("status", "--dsn", dsn)["partitions"]]
    hole = names[len(names) // 2]
    conn.execute(f"ALTER TABLE call_logs DETACH PARTITION {hole}")  # a hole inside the live range
    res = run("health", "--dsn", dsn, ok=False)
    assert res.exit_code == 3 and "gap" in res.stdout + res.stderr
    st = run_json("status", "--dsn", dsn)
    assert len(st["gaps"]) == 1 and not st["healthy"]
    plan = run_json("plan", "--dsn", dsn)
    assert [(p["name"], p["by"]) for p in plan["create"]] == [(hole, "callvault")]
    conn.execute(f"ALTER TABLE {hole} RENAME TO {hole}_aside")
    report = run_json("maintain", "--dsn", dsn)
    assert report["created"] == [hole]
    assert run("health", "--dsn", dsn).stdout.startswith("ok:")


def test_health_sees_a_missing_current_partition(dsn: str) -> None:
    run("init", "--dsn", dsn)
    s = Settings(dsn=dsn)
    far = datetime.now(UTC) + timedelta(weeks=20)
    run("maintain", "--dsn", dsn, "--at", far.isoformat())  # retention at +20 weeks detaches this week
    with connect(s) as conn:
        st = collect(conn, s)
    assert any("no partition holds" in p for p in st.problems)
    with connect(s) as conn:  # the detached weeks (empty here) hold the names; the archive would take them
        for d in st.detached:
            conn.execute(f"DROP TABLE {d[0]}")
        conn.commit()
    report = run_json("maintain", "--dsn", dsn)  # pg_partman never backfills; callvault does
    assert report["created"]
    assert run("health", "--dsn", dsn).stdout.startswith("ok:")
