"""``callvault mirror``: two real clusters (the session's, a second one), logical replication between
them. The target gets the table with its own lifecycle, the mirror receives only what was asked (one
tenant, no transcript), rows written afterwards — into a partition ``maintain`` creates after the
mirror began included — arrive, lag is reported, and ``mirror drop`` leaves no slot behind."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from click.testing import Result

from callvault.embedded import Cluster
from tests.helpers import run, run_json
from tests.test_publish import insert, wait_for

TENANTS = [str(uuid.UUID(int=i + 11)) for i in range(3)]


@pytest.fixture(scope="module")
def second() -> Iterator[Cluster]:
    home = Path(tempfile.mkdtemp(prefix="callvault-mirror-", dir="/tmp"))
    home.chmod(0o755)
    c = Cluster(home, settings={"fsync": "off"})
    c.up()
    yield c
    c.down()
    shutil.rmtree(home, ignore_errors=True)


def test_metadata_mirror_of_one_tenant_follows_the_primary(dsn: str, conn: psycopg.Connection, second: Cluster) -> None:
    run("init", "--dsn", dsn)
    now = conn.execute("SELECT date_trunc('hour', now())").fetchone()[0]
    week_ago = now - timedelta(days=8)  # an older partition too: the initial copy must find it on the target
    for t in TENANTS:
        insert(conn, t, now, 4)
        insert(conn, t, week_ago, 2)
    target = second.dsn()
    made = run_json("mirror", "create", "--dsn", dsn, "--to", target, "--columns", "metadata", "--tenant", TENANTS[1],
                    "--name", "meta")  # fmt: skip
    assert made["mirror"] == "callvault_mirror_meta" and "transcript" not in made["columns"]
    with psycopg.connect(target, autocommit=True) as tgt:
        assert wait_for(tgt, "SELECT count(*) FROM call_logs", (6,)) == (6,)
        assert tgt.execute("SELECT count(DISTINCT tenant_id), count(transcript) FROM call_logs").fetchone() == (1, 0)
        # the target's own lifecycle and isolation
        assert tgt.execute("SELECT relforcerowsecurity FROM pg_class WHERE oid = 'call_logs'::regclass").fetchone() == (
            True,
        )  # fmt: skip
        # a partition maintain creates after the mirror began, on both sides
        run("maintain", "--dsn", dsn, "--at", (now + timedelta(weeks=3)).isoformat())
        run("maintain", "--dsn", target, "--at", (now + timedelta(weeks=3)).isoformat())
        later = now + timedelta(weeks=4, hours=2)
        for t in TENANTS:
            insert(conn, t, later, 3)
        assert wait_for(tgt, "SELECT count(*) FROM call_logs", (9,)) == (9,)
        assert tgt.execute("SELECT count(*) FROM call_logs_default").fetchone() == (0,)
        # an erasure delete on the primary reaches the mirror
        conn.execute(
            "DELETE FROM call_logs WHERE tenant_id = %s AND started_at = %s", (TENANTS[1], later + timedelta(seconds=1))
        )
        assert wait_for(tgt, "SELECT count(*) FROM call_logs", (8,)) == (8,)
    st = run_json("mirror", "status", "--dsn", dsn, "--to", target)
    mine = [s for s in st["slots"] if s["slot"] == "callvault_mirror_meta"]
    assert mine and mine[0]["active"] and mine[0]["lag_bytes"] is not None and mine[0]["wal_retained_bytes"] is not None
    assert st["target"]["rows"] == 8 and st["target"]["subscriptions"][0]["enabled"]

    dropped = run_json("mirror", "drop", "--dsn", dsn, "--name", "meta", "--to", target)
    assert any("slot" in s for s in dropped["steps"])
    assert conn.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'callvault%'").fetchone() == (
        0,
    )
    assert conn.execute("SELECT count(*) FROM pg_publication WHERE pubname = 'callvault_mirror_meta'").fetchone() == (
        0,
    )
    with psycopg.connect(target) as tgt:
        assert tgt.execute("SELECT count(*) FROM pg_subscription").fetchone() == (0,)
        assert tgt.execute("SELECT count(*) FROM call_logs").fetchone() == (8,), "the mirror's rows stay"


def test_mirror_bad_input_is_one_line_and_leaves_nothing(dsn: str, conn: psycopg.Connection, second: Cluster) -> None:
    run("init", "--dsn", dsn)
    cases = [
        (["--to", "postgresql://nobody@127.0.0.1:1/x"], 69, "cannot be reached"),
        (["--to", dsn], 2, "primary database itself"),
        (["--to", second.dsn(), "--columns", "call_id"], 2, "primary key"),
        (["--to", second.dsn(), "--name", "Bad-Name"], 2, "lower-case"),
    ]
    for args, code, text in cases:
        res = run("mirror", "create", "--dsn", dsn, *args, ok=False)
        assert res.exit_code == code and text in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert conn.execute("SELECT count(*) FROM pg_publication").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone() == (0,)
    # a role without the rights: refused before anything is made, on either side
    role = f"cv_weak_{uuid.uuid4().hex[:6]}"
    conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'weak-pass'")
    with psycopg.connect(second.dsn("postgres"), autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'weak-pass'")
        admin.execute(f"CREATE DATABASE {role}")
    try:
        weak = dsn.replace(dsn.split("//", 1)[1].split("@", 1)[0], f"{role}:weak-pass")
        res = run("mirror", "create", "--dsn", weak, "--to", second.dsn(), ok=False)
        assert res.exit_code == 77 and "does not own" in res.output, res.output
        fresh = second.dsn(role)
        weak_target = fresh.replace(fresh.split("//", 1)[1].split("@", 1)[0], f"{role}:weak-pass")
        res = run("mirror", "create", "--dsn", dsn, "--to", weak_target, ok=False)
        assert res.exit_code == 77 and "not a superuser" in res.output, res.output
        with psycopg.connect(fresh) as t:
            assert t.execute("SELECT to_regclass('public.call_logs')").fetchone() == (None,), "nothing made there"
    finally:
        conn.execute(f"DROP ROLE {role}")
        with psycopg.connect(second.dsn("postgres"), autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {role} WITH (FORCE)")
            admin.execute(f"DROP ROLE {role}")
    # a target that holds a differently shaped call_logs is refused before anything is made
    other = f"cv_shape_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(second.dsn("postgres"), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {other}")
    try:
        with psycopg.connect(second.dsn(other), autocommit=True) as t:
            t.execute("CREATE TABLE call_logs (id int)")
        res = run("mirror", "create", "--dsn", dsn, "--to", second.dsn(other), ok=False)
        assert res.exit_code == 65 and "another shape" in res.output, res.output
        assert conn.execute("SELECT count(*) FROM pg_publication").fetchone() == (0,)
        # the primary's side of a mirror whose target is gone can be removed
        gone = run("mirror", "drop", "--dsn", dsn, "--name", "nothing_here", ok=False)
        assert gone.exit_code == 2 and "no mirror" in gone.output
    finally:
        with psycopg.connect(second.dsn("postgres"), autocommit=True) as admin:
            admin.execute(f"DROP DATABASE {other} WITH (FORCE)")


def test_health_names_a_slot_that_holds_back_too_much_wal(
    dsn: str, conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slot whose subscriber is gone: health fails naming it and the fix; ``mirror drop --force``
    (no target) frees it, and the inactive tablesync slot its copy left (no subscription oid recorded:
    found by its name); health is ok again."""
    run("init", "--dsn", dsn)
    conn.execute("SELECT pg_create_logical_replication_slot('callvault_mirror_gone', 'pgoutput')")
    sync = "pg_4242_sync_4243_4244"  # as PostgreSQL names a table's initial-copy slot
    conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (sync,))
    try:
        insert(conn, TENANTS[0], conn.execute("SELECT now()").fetchone()[0], 2000, text="x" * 2000)
        monkeypatch.setenv("CALLVAULT_SLOT_WAL_LIMIT_MB", "0.5")
        res = run("health", "--dsn", dsn, ok=False)
        assert res.exit_code == 3 and "callvault_mirror_gone" in res.output and "--force" in res.output, res.output
        assert any(sync in p for p in run_json("status", "--dsn", dsn)["problems"])
        st = run_json("status", "--dsn", dsn)
        assert [s["slot"] for s in st["replication_slots"]] == ["callvault_mirror_gone"]
        assert [s["slot"] for s in st["tablesync_slots"]] == [sync]
        dropped = run_json("mirror", "drop", "--dsn", dsn, "--name", "gone", "--force")
        assert f"tablesync slot {sync} dropped on the primary" in dropped["steps"], dropped
        assert run("health", "--dsn", dsn).exit_code == 0
    finally:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE slot_name IN ('callvault_mirror_gone', %s)",
            (sync,),
        )


def test_mirror_never_stalls_through_retention_archive_and_late_rows(
    dsn: str, conn: psycopg.Connection, second: Cluster, tmp_path: Path
) -> None:
    """The primary archives (DETACH/DROP do not replicate): the mirror keeps its copy and keeps applying;
    the mirror's own retention drops weeks; a late row for a week the mirror dropped lands in its
    DEFAULT partition and the rows after it still arrive."""
    from datetime import datetime

    from tests.test_archive import AT, fill

    run("init", "--dsn", dsn)
    fill(conn, per_tenant_week=2)
    total = conn.execute("SELECT count(*) FROM call_logs").fetchone()
    target_db = f"cv_keep_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(second.dsn("postgres"), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {target_db}")
    target = second.dsn(target_db)
    try:
        run("mirror", "create", "--dsn", dsn, "--to", target, "--name", "keep")
        with psycopg.connect(target, autocommit=True) as tgt:
            count = "SELECT count(*) FROM call_logs"
            assert wait_for(tgt, count, total) == total
            # the primary archives its oldest weeks: detach, export, verify, drop
            (tmp_path / "store").mkdir()  # an archive store that exists (a missing one is taken for a typo)
            report = run_json("archive", "--dsn", dsn, "--to", (tmp_path / "store").as_uri(), "--at", AT)
            archived = sum(p["rows"] for p in report["partitions"])
            assert archived > 0 and all(p["step_after"] == "dropped" for p in report["partitions"])
            now = conn.execute("SELECT statement_timestamp() - interval '1 minute'").fetchone()[0]
            insert(conn, TENANTS[0], now, 4)
            assert wait_for(tgt, count, (total[0] + 4,)) == (total[0] + 4,), "the mirror keeps its copy and applies"
            # the mirror's own retention, two weeks further on than the primary's
            later = (datetime.fromisoformat(AT) + timedelta(weeks=2)).isoformat()
            run("maintain", "--dsn", target, "--at", later)
            kept = tgt.execute(count).fetchone()[0]
            assert kept < total[0] + 4 - archived, "the mirror dropped weeks by its own retention"
            dropped_week = conn.execute(
                "SELECT min(started_at) FROM call_logs WHERE started_at >= %s", (now - timedelta(days=400),)
            ).fetchone()[0]
            on_mirror = tgt.execute("SELECT count(*) FROM call_logs WHERE started_at = %s", (dropped_week,)).fetchone()
            assert on_mirror == (0,), "that week is gone from the mirror, not from the primary"
            # a late row for it: lands in the mirror's default partition; the next rows still arrive
            insert(conn, TENANTS[1], dropped_week + timedelta(minutes=1), 1)
            insert(conn, TENANTS[2], now + timedelta(seconds=30), 2)
            assert wait_for(tgt, count, (kept + 3,)) == (kept + 3,), "the apply worker did not stall"
            assert tgt.execute("SELECT count(*) FROM call_logs_default").fetchone() == (1,)
            st = run_json("mirror", "status", "--dsn", dsn, "--to", target)
            assert st["target"]["rows_in_default_partition"] == 1
    finally:
        run("mirror", "drop", "--dsn", dsn, "--name", "keep", "--to", target, ok=False)
        with psycopg.connect(second.dsn("postgres"), autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {target_db} WITH (FORCE)")


# --- issue 24, item 2: a re-created mirror copied nothing and reported green -----------------------------

SYNC_SLOTS = "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'pg\\_%\\_sync\\_%'"
NOT_READY = "SELECT count(*) FILTER (WHERE srsubstate <> 'r'), count(*) FROM pg_subscription_rel"


@contextmanager
def target_database(cluster: Cluster, prefix: str) -> Iterator[str]:
    """A fresh database on ``cluster`` (dropped afterwards; its mirror must be dropped first)."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield cluster.dsn(name)
    finally:
        with contextlib.suppress(psycopg.Error), psycopg.connect(cluster.dsn(name), autocommit=True) as t:
            here = "SELECT subname FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid AND d.datname = %s"
            for (sub,) in t.execute(here, (name,)).fetchall():  # a failed test's: DROP DATABASE refuses it
                t.execute(f"ALTER SUBSCRIPTION {sub} DISABLE")
                t.execute(f"ALTER SUBSCRIPTION {sub} SET (slot_name = NONE)")
                t.execute(f"DROP SUBSCRIPTION {sub}")
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def copy_again(conn: psycopg.Connection, target: str, full: str) -> None:
    """Make the mirror's subscription copy the table again into a target that holds its rows — what a
    mirror re-created over a kept table does: the copy fails on duplicate keys and retries forever."""
    conn.execute(f"ALTER PUBLICATION {full} DROP TABLE call_logs")
    with psycopg.connect(target, autocommit=True) as tgt:
        tgt.execute(f"ALTER SUBSCRIPTION {full} REFRESH PUBLICATION")
        conn.execute(f"ALTER PUBLICATION {full} ADD TABLE call_logs")
        tgt.execute(f"ALTER SUBSCRIPTION {full} REFRESH PUBLICATION WITH (copy_data = true)")
        assert wait_for(tgt, NOT_READY, (1, 1)) == (1, 1)
    assert wait_for(conn, SYNC_SLOTS, (1,)) == (1,), "the failing copy's tablesync slot on the primary"


def one_line(res: Result, code: int) -> str:
    out = res.output.strip()
    assert res.exit_code == code and len(out.splitlines()) == 1 and "Traceback" not in out, res.output
    assert "secret words" not in out, "no call content in messages"
    return out


def test_recreated_mirror_refuses_a_target_holding_rows_and_truncate_target_copies_every_row(
    dsn: str, conn: psycopg.Connection, second: Cluster
) -> None:
    """The newcomer's sequence: create, drop (the target keeps its rows), create again for one tenant.
    The second create is refused, naming the table, its rows and the fix, and makes nothing; with
    --truncate-target every row of the tenant lands and nothing reports a problem."""
    run("init", "--dsn", dsn)
    now = conn.execute("SELECT date_trunc('hour', now())").fetchone()[0]
    for t in TENANTS:
        insert(conn, t, now, 4)
        insert(conn, t, now - timedelta(days=8), 2)
    with target_database(second, "cv_again") as target:
        run("mirror", "create", "--dsn", dsn, "--to", target, "--columns", "metadata", "--name", "meta")
        with psycopg.connect(target, autocommit=True) as tgt:
            assert wait_for(tgt, "SELECT count(*) FROM call_logs", (18,)) == (18,)
        run("mirror", "drop", "--dsn", dsn, "--name", "meta", "--to", target)

        again = ["mirror", "create", "--dsn", dsn, "--to", target, "--tenant", TENANTS[1], "--name", "one"]
        msg = one_line(run(*again, ok=False), 65)
        assert "public.call_logs" in msg and "18 rows" in msg and "--truncate-target" in msg, msg
        assert conn.execute("SELECT count(*) FROM pg_publication").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone() == (0,)
        with psycopg.connect(target, autocommit=True) as tgt:
            assert tgt.execute("SELECT count(*) FROM pg_subscription").fetchone() == (0,), "nothing made there"
            assert tgt.execute("SELECT count(*) FROM call_logs").fetchone() == (18,), "nor anything deleted"

        made = run_json(*again, "--truncate-target")
        assert any("emptied" in s and "18 rows" in s for s in made["steps"]), made
        want = conn.execute(
            "SELECT count(*), count(DISTINCT id) FROM call_logs WHERE tenant_id = %s", (TENANTS[1],)
        ).fetchone()
        with psycopg.connect(target, autocommit=True) as tgt:
            assert wait_for(tgt, NOT_READY, (0, 1)) == (0, 1), "the table is ready: its copy finished"
            assert wait_for(tgt, "SELECT count(*), count(DISTINCT id) FROM call_logs", want) == want
            assert tgt.execute("SELECT count(DISTINCT tenant_id), count(transcript) FROM call_logs").fetchone() == (
                1,
                want[0],
            )
        st = run_json("mirror", "status", "--dsn", dsn, "--to", target)
        assert st["problems"] == [] and st["healthy"] and st["tablesync_slots"] == [], st
        assert st["target"]["subscriptions"][0]["tables"] == [
            {"table": "call_logs", "state": "r", "ready": True, "meaning": "ready"}
        ]
        assert run("health", "--dsn", dsn).exit_code == 0
        assert run("health", "--dsn", target).exit_code == 0
        # --truncate-target never empties a table another mirror feeds
        msg = one_line(run("mirror", "create", "--dsn", dsn, "--to", target, "--name", "two", "--truncate-target",
                           ok=False), 2)  # fmt: skip
        assert "already receives subscription callvault_mirror_one" in msg, msg
        with psycopg.connect(target, autocommit=True) as tgt:
            assert tgt.execute("SELECT count(*) FROM call_logs").fetchone() == (want[0],)
        run("mirror", "drop", "--dsn", dsn, "--name", "one", "--to", target)
    assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone() == (0,)


def test_a_table_stuck_in_its_initial_copy_fails_status_and_health_and_drop_frees_its_tablesync_slot(
    dsn: str, conn: psycopg.Connection, second: Cluster
) -> None:
    """A subscription table not ready on the target ('d': its copy fails on duplicate keys, forever) while
    the slot reads lag 0: `mirror status` and its --json, `health` on the primary (the tablesync slot)
    and on the target (pg_subscription_rel) report it; `mirror drop` leaves no tablesync slot behind."""
    run("init", "--dsn", dsn)
    insert(conn, TENANTS[0], conn.execute("SELECT date_trunc('hour', now())").fetchone()[0], 5)
    with target_database(second, "cv_stuck") as target:
        run("mirror", "create", "--dsn", dsn, "--to", target, "--name", "stuck")
        with psycopg.connect(target, autocommit=True) as tgt:
            assert wait_for(tgt, NOT_READY, (0, 1)) == (0, 1)
        assert wait_for(conn, SYNC_SLOTS, (0,)) == (0,)
        assert run_json("mirror", "status", "--dsn", dsn, "--to", target)["problems"] == []
        assert run("health", "--dsn", dsn).exit_code == 0

        copy_again(conn, target, "callvault_mirror_stuck")
        st = run_json("mirror", "status", "--dsn", dsn, "--to", target)
        assert not st["healthy"] and [s["mirror"] for s in st["tablesync_slots"]] == ["callvault_mirror_stuck"], st
        assert any("not ready" in p and "'d'" in p and "call_logs" in p for p in st["problems"]), st["problems"]
        sync = st["tablesync_slots"][0]["slot"]
        assert any(sync in p and "initial copy has not finished" in p for p in st["problems"]), st["problems"]
        text = run("mirror", "status", "--dsn", dsn, "--to", target).output
        assert "PROBLEM: mirror callvault_mirror_stuck: table call_logs" in text and sync in text, text

        msg = one_line(run("health", "--dsn", dsn, ok=False), 3)
        assert "callvault_mirror_stuck" in msg and sync in msg, msg
        msg = one_line(run("health", "--dsn", target, ok=False), 3)
        assert "call_logs" in msg and "not ready" in msg and "--truncate-target" in msg, msg

        run("mirror", "drop", "--dsn", dsn, "--name", "stuck", "--to", target)
        assert conn.execute(SYNC_SLOTS).fetchone() == (0,), f"{sync} left on the primary"
    assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone() == (0,), "no slot left behind"
    assert run("health", "--dsn", dsn).exit_code == 0


def test_drop_with_the_target_down_refuses_without_force_and_force_frees_every_slot(
    dsn: str, conn: psycopg.Connection
) -> None:
    """`mirror drop` of a mirror whose target is down: refused (exit 69, naming the target and what
    --force does), nothing dropped, with or without --to; --force drops the slot, the tablesync slot of
    the copy in progress (found by the subscription's oid recorded at create) and the publication."""
    home = Path(tempfile.mkdtemp(prefix="callvault-mirror-down-", dir="/tmp"))
    home.chmod(0o755)
    third = Cluster(home, settings={"fsync": "off"})
    third.up()
    try:
        run("init", "--dsn", dsn)
        insert(conn, TENANTS[2], conn.execute("SELECT date_trunc('hour', now())").fetchone()[0], 5)
        target = third.dsn()
        run("mirror", "create", "--dsn", dsn, "--to", target, "--name", "down")
        with psycopg.connect(target, autocommit=True) as tgt:
            assert wait_for(tgt, NOT_READY, (0, 1)) == (0, 1)
        copy_again(conn, target, "callvault_mirror_down")
        third.down()
        port = target.rsplit(":", 1)[1].split("/")[0]
        slots = "SELECT slot_name ~ '^pg_\\d+_sync_' FROM pg_replication_slots ORDER BY 1"
        for extra in ([], ["--to", target]):
            msg = one_line(run("mirror", "drop", "--dsn", dsn, "--name", "down", *extra, ok=False), 69)
            assert f"port={port}" in msg and "--force" in msg and "primary's side only" in msg, msg
            assert "password" not in msg.replace("password included", ""), "no secret in the message"
            assert conn.execute(slots).fetchall() == [(False,), (True,)], "nothing dropped"
            assert conn.execute("SELECT count(*) FROM pg_publication").fetchone() == (1,)
        dropped = run_json("mirror", "drop", "--dsn", dsn, "--name", "down", "--force")
        assert any(s.startswith("tablesync slot pg_") for s in dropped["steps"]), dropped
        assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pg_publication").fetchone() == (0,)
        assert run("health", "--dsn", dsn).exit_code == 0
    finally:
        third.down()
        shutil.rmtree(home, ignore_errors=True)


def test_a_mirror_carries_the_tables_own_columns(dsn: str, conn: psycopg.Connection, second: Cluster) -> None:
    """``--columns`` names a column of the platform's own (issue 28): the target's table gets it, rows carry it."""
    run("init", "--dsn", dsn)
    run("columns", "add", "agent_id", "text", "--dsn", dsn)
    now = conn.execute("SELECT date_trunc('hour', now())").fetchone()[0]
    insert(conn, TENANTS[0], now, 3)
    conn.execute("UPDATE call_logs SET agent_id = 'a-7'")
    target = second.dsn()
    made = run_json("mirror", "create", "--dsn", dsn, "--to", target, "--name", "own", "--truncate-target",
                    "--columns", "id,tenant_id,call_id,started_at,agent_id")  # fmt: skip
    assert made["columns"] == ["id", "tenant_id", "call_id", "started_at", "agent_id"]
    try:
        with psycopg.connect(target, autocommit=True) as tgt:
            query = "SELECT count(*), min(agent_id), count(transcript) FROM call_logs"
            assert wait_for(tgt, query, (3, "a-7", 0)) == (3, "a-7", 0)
        bad = run("mirror", "create", "--dsn", dsn, "--to", target, "--name", "own2", "--columns",
                  "id,tenant_id,started_at,agent_idd", ok=False)  # fmt: skip
        assert bad.exit_code == 2 and "agent_idd" in bad.output and "agent_id" in bad.output
    finally:
        run("mirror", "drop", "--dsn", dsn, "--name", "own", "--to", target)
