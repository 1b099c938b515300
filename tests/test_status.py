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
