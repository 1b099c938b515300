"""callvault init: the partitioned table, pg_partman registration, idempotency, --sql, bad input."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import psycopg.sql
import pytest

from callvault import bootstrap
from callvault.config import Settings, lifecycle_from
from callvault.db import connect
from callvault.errors import DatabaseUnavailable, ExtensionMissing, InvalidSetting, SchemaMismatch
from callvault.partman import available_version
from tests.helpers import make_calls, run, run_json, ts


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
    monday = (when - timedelta(days=when.weekday())).date()
    # weekly tables are named by their Monday (not ISO weeks, which pg_partman 5.x refuses to maintain)
    assert row[0] in (f"call_logs_p{monday:%Y_%m_%d}", f"call_logs_p{monday:%Y%m%d}")


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
    assert "p_interval => '1 week'" in out and "p_type => 'native'" in out  # not ISO 'weekly': 5.x refuses it
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
    assert conn.execute("SELECT to_regclass('callvault.job_history')").fetchone() == (None,)
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


def _count(dsn: str, table: str = "call_logs") -> int:
    with psycopg.connect(dsn) as c:
        row = c.execute(psycopg.sql.SQL("SELECT count(*) FROM {}").format(psycopg.sql.Identifier(table))).fetchone()
    assert row is not None
    return int(row[0])


def _fill(dsn: str, n: int = 240, table: str = "call_logs") -> None:
    """n calls every 6 hours from 60 days ago: spread over ~10 weekly partitions."""
    rows = make_calls(n, start=datetime.now(UTC) - timedelta(days=60), spacing_s=6 * 3600)
    cols = ("tenant_id", "call_id", "started_at", "ended_at", "transcript")
    with (
        psycopg.connect(dsn) as c,
        c.cursor().copy(
            psycopg.sql.SQL("COPY {} ({}) FROM STDIN").format(
                psycopg.sql.Identifier(table), psycopg.sql.SQL(", ").join(map(psycopg.sql.Identifier, cols))
            )
        ) as copy,
    ):
        for r in rows:
            copy.write_row([r[k] for k in cols])


@pytest.mark.parametrize("default_partition", [False, True], ids=["no-default", "default-partition"])
def test_init_repairs_a_dropped_pg_partman(dsn: str, conn: psycopg.Connection, default_partition: bool) -> None:
    """Issue 13: DROP EXTENSION pg_partman CASCADE under an initialised table; init re-registers it."""
    flags = ["--roles", "--premake", "6", "--retention", "120 days"]
    flags += ["--default-partition"] if default_partition else []
    run("init", "--dsn", dsn, *flags)
    _fill(dsn)
    if default_partition:  # a row in the default partition is kept too
        conn.execute("INSERT INTO call_logs (tenant_id, call_id, started_at) VALUES (%s, %s, '2001-01-01')",
                     (uuid.uuid4(), uuid.uuid4()))  # fmt: skip
    rows, before = _count(dsn), partitions(conn)
    conn.execute("DROP EXTENSION pg_partman CASCADE")
    res = run("status", "--dsn", dsn, ok=False)
    assert res.exit_code == 66 and "callvault init" in res.stderr
    out = run("init", "--dsn", dsn, *flags).stdout
    assert "re-register" in out, out
    assert _count(dsn) == rows
    assert set(before) <= set(partitions(conn))  # every partition kept (with its rows)
    st = run_json("status", "--dsn", dsn)
    assert (st["interval"], st["premake"], st["retention"]) == ("weekly", 6, "120 days")
    assert ts(st["premake_horizon"]) >= datetime.now(UTC) + timedelta(weeks=6)
    assert any(p["name"] == "call_logs_default" for p in st["partitions"]) is default_partition
    assert st["default_rows"] == (1 if default_partition else 0)
    run("maintain", "--dsn", dsn)
    if not default_partition:
        run("health", "--dsn", dsn)
    assert "already initialised" in run("init", "--dsn", dsn, *flags).stdout
    run("audit", "--dsn", dsn)
    assert _count(dsn) == rows
    # pg_cron's procedure works against the new registration
    conn.execute("CALL callvault.run_maintenance('public.call_logs')")


def test_init_repairs_a_lost_part_config_row(dsn: str, conn: psycopg.Connection) -> None:
    """pg_partman still installed, callvault's row gone from part_config: the same re-registration."""
    run("init", "--dsn", dsn, "--retention", "120 days")
    _fill(dsn)
    rows = _count(dsn)
    conn.execute("DELETE FROM partman.part_config WHERE parent_table = 'public.call_logs'")
    out = run("init", "--dsn", dsn, "--retention", "120 days").stdout
    assert "re-register" in out and "install pg_partman" not in out
    st = run_json("status", "--dsn", dsn)
    assert st["retention"] == "120 days" and st["problems"] == [] and _count(dsn) == rows


def test_init_after_drop_extension_prints_the_repair_with_sql(dsn: str, conn: psycopg.Connection) -> None:
    run("init", "--dsn", dsn)
    conn.execute("DROP EXTENSION pg_partman CASCADE")
    out = run("init", "--dsn", dsn, "--sql").stdout
    assert "CREATE EXTENSION IF NOT EXISTS pg_partman" in out and "create_parent" in out and "re-register" in out
    assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'pg_partman'").fetchone() == (0,)


def test_init_repair_keeps_the_interval_the_partitions_have(dsn: str, conn: psycopg.Connection) -> None:
    run("init", "--dsn", dsn, "--interval", "daily")
    conn.execute("DROP EXTENSION pg_partman CASCADE")
    res = run("init", "--dsn", dsn, ok=False)  # --interval weekly (the default)
    assert res.exit_code == InvalidSetting.exit_code and "Traceback" not in res.stderr
    assert "partitioned daily" in res.stderr and "--interval daily" in res.stderr, res.stderr
    run("init", "--dsn", dsn, "--interval", "daily")
    assert run_json("status", "--dsn", dsn)["interval"] == "daily"


def test_init_will_not_take_over_a_foreign_partitioned_table(dsn: str, conn: psycopg.Connection) -> None:
    """Same shape, partitions, but never callvault's (no tenant policy): refused, one message, nothing changed."""
    from callvault import schema

    conn.execute(schema.create_bare_table_sql(psycopg.sql.Identifier("public", "call_logs")))
    conn.execute(
        "CREATE TABLE call_logs_p2020w01 PARTITION OF call_logs FOR VALUES FROM ('2019-12-30') TO ('2020-01-06')"
    )
    res = run("init", "--dsn", dsn, ok=False)
    assert res.exit_code == 66 and "Traceback" not in res.stderr
    assert "not managed by pg_partman" in res.stderr and "create_parent" in res.stderr, res.stderr
    assert conn.execute("SELECT count(*) FROM partman.part_config").fetchone() == (0,)


@pytest.mark.parametrize(
    ("ddl", "needle"),
    [
        ("CREATE TABLE call_logs_odd PARTITION OF call_logs FOR VALUES FROM ('2001-01-01') TO ('2001-01-04')",
         "call_logs_odd spans 2001-01-01T00:00:00+00:00 to 2001-01-04T00:00:00+00:00"),
        ("CREATE TABLE call_logs_mine PARTITION OF call_logs FOR VALUES FROM ('2001-01-01') TO ('2001-01-08')",
         "partition call_logs_mine is not named as pg_partman 4.7.2 names it (call_logs_p2001_01_01)"),
    ],
    ids=["odd-bounds", "odd-name"],
)  # fmt: skip
def test_init_repair_refuses_partitions_pg_partman_cannot_carry(dsn: str, conn: psycopg.Connection, ddl: str,
                                                                 needle: str) -> None:  # fmt: skip
    run("init", "--dsn", dsn)
    conn.execute("DROP EXTENSION pg_partman CASCADE")
    conn.execute(ddl)
    res = run("init", "--dsn", dsn, ok=False)
    assert res.exit_code == 66 and "Traceback" not in res.stderr
    assert needle in res.stderr and "Nothing was changed" in res.stderr, res.stderr
    assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'pg_partman'").fetchone() == (0,)
