"""callvault init: the partitioned table, pg_partman registration, idempotency, --sql, bad input."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from callvault import bootstrap
from callvault.config import Settings, lifecycle_from
from callvault.db import connect
from callvault.errors import DatabaseUnavailable, ExtensionMissing, InvalidSetting, SchemaMismatch
from callvault.partman import available_version
from tests.helpers import run, run_json, ts


def partitions(conn: psycopg.Connection[tuple[object, ...]], table: str = "public.call_logs") -> list[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass ORDER BY 1",
        (table,),
    ).fetchall()
    return [r[0] for r in rows]


def test_init_then_status_covers_now_and_four_weeks_ahead(dsn: str, conn: psycopg.Connection) -> None:
    run("init", "--dsn", dsn)
    st = run_json("status", "--dsn", dsn)
    now = datetime.now(UTC)
    parts = st["partitions"]
    assert st["partition_count"] == len(parts) >= 5
    assert st["default_rows"] == 0
    assert st["partman_version"].startswith("4.7")
    assert all(p["name"] != "call_logs_default" for p in parts)
    for p in parts:
        start, end = ts(p["from"]), ts(p["to"])
        assert end - start == timedelta(days=7)
        assert start.weekday() == 0 and start.hour == 0 and start.minute == 0  # Monday 00:00 UTC
    assert any(ts(p["from"]) <= now < ts(p["to"]) for p in parts)
    assert ts(st["premake_horizon"]) >= now + timedelta(weeks=4)
    # the whole retention window is covered, so 90 days of history can be loaded
    assert ts(parts[0]["from"]) <= now - timedelta(days=90)


def test_row_three_weeks_ahead_lands_in_its_own_partition(dsn: str, conn: psycopg.Connection) -> None:
    run("init", "--dsn", dsn)
    when = datetime.now(UTC) + timedelta(weeks=3)
    row = conn.execute(
        "INSERT INTO call_logs (tenant_id, call_id, started_at) VALUES (%s, %s, %s) RETURNING tableoid::regclass::text",
        (uuid.uuid4(), uuid.uuid4(), when),
    ).fetchone()
    assert row is not None
    iso = when.isocalendar()
    assert row[0] == f"call_logs_p{iso.year}w{iso.week:02d}"


def test_no_default_partition_so_out_of_range_rows_fail_loudly(dsn: str, conn: psycopg.Connection) -> None:
    run("init", "--dsn", dsn)
    with pytest.raises(psycopg.errors.CheckViolation, match="no partition"):
        conn.execute(
            "INSERT INTO call_logs (tenant_id, call_id, started_at) VALUES (%s, %s, %s)",
            (uuid.uuid4(), uuid.uuid4(), datetime.now(UTC) + timedelta(weeks=30)),
        )


def test_init_twice_is_a_noop(dsn: str, conn: psycopg.Connection) -> None:
    first = run("init", "--dsn", dsn)
    assert "done:" in first.stdout
    before = partitions(conn)
    second = run("init", "--dsn", dsn)
    assert "already initialised" in second.stdout
    assert partitions(conn) == before
    assert "nothing to do" in run("init", "--dsn", dsn, "--sql").stdout


def test_init_sql_prints_ddl_and_changes_nothing(empty_dsn: str, conn: psycopg.Connection) -> None:
    out = run("init", "--dsn", empty_dsn, "--sql").stdout
    assert "CREATE EXTENSION IF NOT EXISTS pg_partman" in out
    assert 'CREATE TABLE "public"."call_logs"' in out
    assert "PARTITION BY RANGE (started_at)" in out
    assert "p_interval => 'weekly'" in out and "p_type => 'native'" in out
    assert 'DROP TABLE IF EXISTS "public"."call_logs_default"' in out
    with psycopg.connect(empty_dsn) as c:
        assert c.execute("SELECT to_regclass('public.call_logs')").fetchone() == (None,)
        assert c.execute("SELECT count(*) FROM pg_extension WHERE extname = 'pg_partman'").fetchone() == (0,)


def test_init_sql_offline_when_database_unreachable() -> None:
    out = run("init", "--dsn", "postgresql://nobody@127.0.0.1:1/none", "--sql").stdout
    assert out.startswith("-- offline")
    assert "create_parent" in out


def test_init_installs_partman_when_missing(empty_dsn: str) -> None:
    run("init", "--dsn", empty_dsn)
    with psycopg.connect(empty_dsn) as c:
        assert c.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_partman'").fetchone() is not None


@pytest.mark.parametrize(("interval", "days"), [("daily", 1), ("weekly", 7), ("monthly", None)])
def test_intervals(dsn: str, interval: str, days: int | None) -> None:
    run("init", "--dsn", dsn, "--interval", interval, "--retention", "none")
    st = run_json("status", "--dsn", dsn)
    assert st["interval"] == interval and st["retention"] is None
    for p in st["partitions"]:
        start, end = ts(p["from"]), ts(p["to"])
        if days:
            assert (end - start).days == days
        else:
            assert start.day == 1 and end.day == 1 and start.hour == 0
    assert ts(st["premake_horizon"]) > datetime.now(UTC)


def test_reinit_changes_premake_and_retention_but_refuses_interval(dsn: str) -> None:
    run("init", "--dsn", dsn)
    run("init", "--dsn", dsn, "--premake", "6", "--retention", "30 days")
    st = run_json("status", "--dsn", dsn)
    assert st["premake"] == 6 and st["retention"] == "30 days"
    res = run("init", "--dsn", dsn, "--interval", "daily", ok=False)
    assert res.exit_code == InvalidSetting.exit_code
    assert "already partitioned weekly" in res.stderr


def test_existing_table_with_another_shape_is_refused(dsn: str, conn: psycopg.Connection) -> None:
    conn.execute("CREATE TABLE call_logs (id bigint, tenant_id text, started_at timestamptz)")
    with connect(Settings(dsn=dsn)) as c, pytest.raises(SchemaMismatch) as info:
        bootstrap.init(c, Settings(dsn=dsn))
    msg = str(info.value)
    assert "tenant_id is text, expected uuid" in msg and "PARTITION BY RANGE" in msg and "Nothing was changed" in msg
    assert conn.execute("SELECT to_regclass('callvault.maintenance_log')").fetchone() == (None,)
    res = run("init", "--dsn", dsn, ok=False)
    assert res.exit_code == SchemaMismatch.exit_code


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--interval", "hourly"], "hourly"),
        (["--retention", "ninety days"], "ninety days"),
        (["--retention", "-5 days"], "-5 days"),
        (["--premake", "0"], "premake"),
        (["--table", "x" * 60], "bytes"),
        (["--table", "a.b"], "'.'"),
    ],
)
def test_bad_settings_name_the_input(args: list[str], needle: str) -> None:
    res = run("init", "--dsn", "postgresql://127.0.0.1:1/none", *args, ok=False)
    assert res.exit_code == 2
    assert needle in res.stderr


def test_unreachable_dsn_is_a_clear_error() -> None:
    res = run("status", "--dsn", "postgresql://someone:secret@127.0.0.1:1/nowhere", ok=False)
    assert res.exit_code == DatabaseUnavailable.exit_code
    assert "cannot connect to postgresql://someone:***@127.0.0.1:1/nowhere" in res.stderr
    assert "secret" not in res.stderr


def test_missing_extension_message_says_how_to_install(conn: psycopg.Connection) -> None:
    with pytest.raises(ExtensionMissing, match=r"apt-get install postgresql-15-partman"):
        available_version(conn, name="pg_partman_not_here")


def test_hostile_names_are_quoted_not_injected(dsn: str, conn: psycopg.Connection) -> None:
    table = 'calls"; DROP TABLE x; --'
    schema = "Tenant Data"
    run("init", "--dsn", dsn, "--schema", schema, "--table", table)
    st = run_json("status", "--dsn", dsn, "--schema", schema, "--table", table)
    assert st["partition_count"] >= 5
    assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s", (schema,)).fetchone()[0] >= 5


@pytest.mark.parametrize("table", ['calls"; DROP TABLE x; --', "Call Logs", "call-logs;x", "ünïcode", "back\\slash%$"])
def test_accepted_hostile_names_live_a_whole_lifecycle(dsn: str, conn: psycopg.Connection, tmp_path: Path,
                                                       table: str) -> None:  # fmt: skip
    """Every name callvault accepts also works through pg_partman: init, maintenance now and ahead, archive."""
    run("init", "--dsn", dsn, "--table", table)
    run("maintain", "--dsn", dsn, "--table", table)
    at = (datetime.now(UTC) + timedelta(weeks=15)).isoformat()  # far enough for a week past retention
    made = run_json("maintain", "--dsn", dsn, "--table", table, "--at", at)
    assert made["created"] and made["detached"]
    archived = run_json("archive", "--dsn", dsn, "--table", table, "--at", at, "--to", tmp_path.as_uri(), "--json")
    assert archived["partitions"] and all(p["step_after"] == "dropped" for p in archived["partitions"])
    assert conn.execute("SELECT to_regclass('public.x')").fetchone() == (None,)


@pytest.mark.parametrize(
    ("flag", "name", "message"),
    [
        ("--table", "x'); drop table y; --", "single quote"),
        ("--schema", "it's", "single quote"),
        ("--schema", "pg_evil", "starts with 'pg_'"),
        ("--table", "line\nbreak", "control character"),
        ("--table", "a.b", "contains '.'"),
        ("--table", "t" * 49, "the limit is 48 bytes"),
    ],
)
def test_names_pg_partman_cannot_carry_are_refused_before_any_sql(
    dsn: str, conn: psycopg.Connection, flag: str, name: str, message: str
) -> None:
    res = run("init", "--dsn", dsn, flag, name, ok=False)
    assert res.exit_code == 2 and message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert conn.execute("SELECT count(*) FROM partman.part_config").fetchone() == (0,)


def test_lifecycle_from_parses_user_strings() -> None:
    lc = lifecycle_from("Monthly", 6, "1 year")
    assert str(lc.interval) == "monthly" and lc.premake == 6 and lc.retention is not None
    assert lifecycle_from(retention="none").retention is None
