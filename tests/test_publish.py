"""``callvault publish``: a publication via the partition root, proved with a real subscription in a
second database of the same cluster (the slot made first, as Postgres requires on one cluster): rows
land, partitions that maintenance creates later are covered with no further action, a column list and
a tenant filter hold. Bad input: one line, nothing created."""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from callvault.embedded import Cluster
from tests.conftest import _drop_db
from tests.helpers import run, run_json

TENANTS = [str(uuid.UUID(int=i + 1)) for i in range(3)]


def insert(conn: psycopg.Connection, tenant: str, at: datetime, n: int, text: str = "secret words") -> None:
    conn.execute(
        "INSERT INTO call_logs (tenant_id, call_id, started_at, ended_at, duration_sec, transcript) "
        "SELECT %s, gen_random_uuid(), %s + g * interval '1 second', %s + g * interval '1 second' + interval '9 s', "
        "9, %s FROM generate_series(1, %s) g",
        (tenant, at, at, text, n),
    )


def wait_for(conn: psycopg.Connection, query: str, want: object, timeout: float = 60) -> object:
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = conn.execute(query).fetchone()
        if got == want:
            return got
        time.sleep(0.2)
    return got


def drop_slot(conn: psycopg.Connection, slot: str, timeout: float = 30) -> None:
    """Drop a test's replication slot once its walsender has let go (a disabled subscription's walsender
    exits a moment later, not at once)."""
    wait_for(conn, f"SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}' AND active", (0,), timeout)
    conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", (slot,))


def test_publish_via_root_covers_later_partitions_with_columns_and_tenants(
    cluster: Cluster, dsn: str, conn: psycopg.Connection
) -> None:
    run("init", "--dsn", dsn)
    now = conn.execute("SELECT date_trunc('hour', now())").fetchone()[0]
    for t in TENANTS:
        insert(conn, t, now, 5)
    rep = run_json("publish", "--dsn", dsn, "--columns", "metadata", "--tenant", TENANTS[0], "--name", "pub_t0")
    assert rep["action"] == "created" and rep["publish_via_partition_root"] and "transcript" not in rep["columns"]
    assert (
        run_json("publish", "--dsn", dsn, "--columns", "metadata", "--tenant", TENANTS[0], "--name", "pub_t0")["action"]
        == "unchanged"
    )
    root = conn.execute("SELECT pubviaroot FROM pg_publication WHERE pubname = 'pub_t0'").fetchone()
    assert root == (True,)

    target = f"cv_mirror_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(target)))
    slot = f"cv_test_{uuid.uuid4().hex[:8]}"
    try:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        with psycopg.connect(cluster.dsn(target), autocommit=True) as sub:
            sub.execute(
                "CREATE TABLE call_logs (id bigint, tenant_id uuid NOT NULL, call_id uuid NOT NULL, started_at "
                "timestamptz NOT NULL, ended_at timestamptz, duration_sec int, transcript text, metadata jsonb, "
                "PRIMARY KEY (tenant_id, started_at, id))"
            )
            sub.execute(
                sql.SQL(
                    "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION pub_t0 WITH (create_slot = false, slot_name = {})"
                ).format(sql.Identifier(slot), sql.Literal(dsn), sql.Literal(slot))
            )
            assert wait_for(sub, "SELECT count(*) FROM call_logs", (5,)) == (5,)
            # a partition maintenance creates after the publication began: covered, no action taken
            run("maintain", "--dsn", dsn, "--at", (now + timedelta(weeks=3)).isoformat())
            newest = conn.execute(
                "SELECT max((regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \\(''([^'']+)''\\)'))[1]"
                "::timestamptz) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'public.call_logs'::regclass"
            ).fetchone()[0]
            assert newest > now + timedelta(weeks=4)
            for t in TENANTS:
                insert(conn, t, newest + timedelta(hours=1), 3)
            assert wait_for(sub, "SELECT count(*) FROM call_logs", (8,)) == (8,)
            assert sub.execute("SELECT count(DISTINCT tenant_id), count(transcript) FROM call_logs").fetchone() == (
                1, 0,
            )  # fmt: skip
            sub.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(sql.Identifier(slot)))
            sub.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(sql.Identifier(slot)))
            sub.execute(sql.SQL("DROP SUBSCRIPTION {}").format(sql.Identifier(slot)))
    finally:
        drop_slot(conn, slot)
        _drop_db(cluster, target)


def test_publish_bad_input_is_one_line_and_changes_nothing(dsn: str, conn: psycopg.Connection) -> None:
    run("init", "--dsn", dsn)
    cases = [
        (["--columns", "tenant_id,call_id"], "primary key"),
        (["--columns", "nope"], "unknown column"),
        (["--tenant", "not-a-uuid"], "not a UUID"),
    ]
    for args, text in cases:
        res = run("publish", "--dsn", dsn, *args, ok=False)
        assert res.exit_code == 2 and text in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert conn.execute("SELECT count(*) FROM pg_publication").fetchone() == (0,)
    run("publish", "--dsn", dsn)
    res = run("publish", "--dsn", dsn, "--columns", "metadata", ok=False)
    assert res.exit_code == 2 and "--replace" in res.output
    assert run_json("publish", "--dsn", dsn, "--columns", "metadata", "--replace")["action"] == "replaced"
    cols = conn.execute("SELECT attnames FROM pg_publication_tables WHERE pubname = 'callvault_call_logs'").fetchone()
    assert "transcript" not in cols[0]
    printed = run("publish", "--dsn", dsn, "--name", "other", "--sql").output
    assert "CREATE PUBLICATION" in printed and "publish_via_partition_root = true" in printed
    assert conn.execute("SELECT count(*) FROM pg_publication WHERE pubname = 'other'").fetchone() == (0,)


@pytest.mark.parametrize("level", ["replica"])
def test_publish_refuses_a_server_without_logical_wal(level: str) -> None:
    home = Path(tempfile.mkdtemp(prefix="callvault-walreplica-", dir="/tmp"))  # reachable by the server's user
    home.chmod(0o755)
    c = Cluster(home, settings={"wal_level": level, "fsync": "off"})
    c.up()
    try:
        d = c.dsn()
        run("init", "--dsn", d)
        res = run("publish", "--dsn", d, ok=False)
        assert res.exit_code == 69 and "wal_level = logical" in res.output and "restart" in res.output
        with psycopg.connect(d) as x:
            assert x.execute("SELECT count(*) FROM pg_publication").fetchone() == (0,)
    finally:
        c.down()
        shutil.rmtree(home, ignore_errors=True)
