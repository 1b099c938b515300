"""No silent wrong answers (issue 24): what a newcomer following the docs got with exit 0.

Each test replays one case on a real cluster and a real directory store: the archive's reads use the
store the journal recorded, a store is never started silently, and commands that find nothing to act on
where the user named something say so with a non-zero exit.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from tests.helpers import run, run_json
from tests.test_archive import AT, TENANTS, fill


@pytest.fixture
def archived(dsn: str, conn: psycopg.Connection, tmp_path: Path) -> tuple[str, str, dict[str, dict[str, int]]]:
    """The table filled, its weeks past retention at AT archived to a directory store named with --to.
    Returns (dsn, store URL, {week start: {tenant: rows}} of what was archived)."""
    run("init", "--dsn", dsn)
    fill(conn)
    store = tmp_path / "calls-archive"
    store.mkdir()
    plan = run_json("plan", "--dsn", dsn, "--at", AT)
    weeks: dict[str, dict[str, int]] = {}
    for p in plan["retire"]:
        rows = conn.execute(
            "SELECT tenant_id::text, count(*) FROM call_logs WHERE started_at >= %s AND started_at < %s GROUP BY 1",
            (p["from"], p["to"]),
        ).fetchall()
        weeks[p["from"][:10]] = dict(rows)
    assert len(weeks) >= 2
    run("archive", "--dsn", dsn, "--to", store.as_uri(), "--at", AT)
    return dsn, store.as_uri(), weeks


def test_reads_use_the_store_the_journal_recorded(archived: tuple[str, str, dict[str, dict[str, int]]]) -> None:
    dsn, _url, weeks = archived
    # archive list, without --to: every archived week, from the store the journal names
    listed = run_json("archive", "list", "--dsn", dsn)
    assert {m["period"] for m in listed} == set(weeks)
    # archive query, without --to: the archived rows, not 0
    week = sorted(weeks)[0]
    q = run_json("archive", "query", "--dsn", dsn, f"SELECT count(*) AS n FROM call_logs WHERE week = DATE '{week}'")
    assert q[0]["n"] == sum(weeks[week].values()) > 0
    # calls, without --store-url: a tenant's archived week comes back from the archive tier
    tenant = TENANTS[2]
    page = run_json("calls", "--dsn", dsn, "--tenant-id", tenant, "--since", week, "--until",
                    (date.fromisoformat(week) + timedelta(days=7)).isoformat(),
                    "--limit", "10000")  # fmt: skip
    assert len(page["calls"]) == weeks[week][tenant]
    assert {c["tier"] for c in page["calls"]} == {"archive"}
    # restore --week, without --to: the week's own store
    rep = run_json("restore", "--dsn", dsn, "--week", week)
    assert rep["rows"] == sum(weeks[week].values())


def test_a_new_store_is_never_started_silently(dsn: str, conn: psycopg.Connection, tmp_path: Path) -> None:
    run("init", "--dsn", dsn)
    fill(conn)
    missing = tmp_path / "nonexistent" / "dir"
    # a directory that does not exist: refused, nothing created or detached
    result = run("archive", "--dsn", dsn, "--to", missing.as_uri(), "--at", AT, ok=False)
    assert result.exit_code == 2, result.output
    assert "does not exist" in result.stderr and "--new-store" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not missing.exists()
    assert conn.execute("SELECT count(*) FROM callvault.archive_journal").fetchone()[0] == 0
    # with --new-store it is started on purpose
    first = run_json("archive", "--dsn", dsn, "--to", missing.as_uri(), "--at", AT, "--new-store")
    assert first["partitions"] and all(p["step_after"] == "dropped" for p in first["partitions"])
    # a week later another store, which exists but is not where earlier periods went: refused
    later = (datetime.fromisoformat(AT) + timedelta(weeks=1)).isoformat()
    other = tmp_path / "other"
    other.mkdir()
    result = run("archive", "--dsn", dsn, "--to", other.as_uri(), "--at", later, ok=False)
    assert result.exit_code == 2, result.output
    assert missing.as_uri() in result.stderr and "--new-store" in result.stderr
    assert not any(other.iterdir())
    # the recorded store takes the next week without any flag
    run("archive", "--dsn", dsn, "--to", missing.as_uri(), "--at", later)


def test_a_read_from_a_store_that_is_gone_is_an_error(archived: tuple[str, str, dict[str, dict[str, int]]]) -> None:
    dsn, url, _ = archived
    Path(url[len("file://") :]).rename(Path(url[len("file://") :] + "-moved"))
    for args in (["archive", "list"], ["archive", "query", "SELECT count(*) FROM call_logs"]):
        result = run(*args, "--dsn", dsn, ok=False)
        assert result.exit_code == 69, result.output
        assert "does not exist" in result.stderr and "Traceback" not in result.output


def test_replay_of_an_id_that_is_not_there_says_so(dsn: str) -> None:
    run("init", "--dsn", dsn)
    result = run("quarantine", "replay", "--dsn", dsn, "--id", "5", ok=False)
    assert result.exit_code == 2, result.output
    assert "#5" in result.stderr and "no such row" in result.stderr


def test_archive_query_reads_csv_weeks_too(dsn: str, conn: psycopg.Connection, tmp_path: Path) -> None:
    run("init", "--dsn", dsn)
    fill(conn)
    store = tmp_path / "csv-store"
    store.mkdir()
    plan = run_json("plan", "--dsn", dsn, "--at", AT)
    written = sum(
        conn.execute(
            "SELECT count(*) FROM call_logs WHERE started_at >= %s AND started_at < %s", (p["from"], p["to"])
        ).fetchone()[0]
        for p in plan["retire"]
    )
    run("archive", "--dsn", dsn, "--to", store.as_uri(), "--at", AT, "--format", "csv")
    q = run_json("archive", "query", "--dsn", dsn, "SELECT count(*) AS n, count(DISTINCT week) AS weeks, "
                 "min(started_at) IS NOT NULL AS typed FROM call_logs")  # fmt: skip
    assert q[0]["n"] == written > 0 and q[0]["weeks"] == len(plan["retire"]) and q[0]["typed"]


def test_audit_fix_revokes_what_an_earlier_role_prefix_left(dsn: str, conn: psycopg.Connection) -> None:
    prefix = f"acme{abs(hash(dsn)) % 10_000}"
    run("init", "--dsn", dsn, "--roles", "--role-prefix", prefix)
    run("init", "--dsn", dsn, "--roles")
    assert run("audit", "--dsn", dsn, ok=False).exit_code == 3  # acme_ingest still holds INSERT on the parent
    fixed = run("audit", "--dsn", dsn, "--fix", ok=False)
    assert fixed.exit_code == 0, fixed.output
    held = conn.execute(
        "SELECT count(*) FROM information_schema.role_table_grants WHERE table_name = 'call_logs' AND grantee = %s",
        (f"{prefix}_ingest",),
    ).fetchone()[0]
    assert held == 0
    with psycopg.connect(dsn, autocommit=True) as su:
        for kind in ("owner", "ingest", "app", "tenant_writer"):
            su.execute(psycopg.sql.SQL("DROP OWNED BY {}").format(psycopg.sql.Identifier(f"{prefix}_{kind}")))
            su.execute(psycopg.sql.SQL("DROP ROLE {}").format(psycopg.sql.Identifier(f"{prefix}_{kind}")))


def test_init_after_the_table_was_dropped_by_hand(dsn: str, conn: psycopg.Connection) -> None:
    run("init", "--dsn", dsn)
    conn.execute("DROP TABLE call_logs")
    conn.commit()
    again = run("init", "--dsn", dsn, ok=False)
    assert again.exit_code == 0, again.output
    assert run_json("status", "--dsn", dsn)["partitions"]


def test_table_options_are_refused_where_unused() -> None:
    result = run("--schema", "other", "dev", "url", ok=False)
    assert result.exit_code == 2 and "--schema" in result.stderr and "not used" in result.stderr


def test_restore_uses_the_configured_spool(
    archived: tuple[str, str, dict[str, dict[str, int]]], tmp_path: Path
) -> None:
    """`archive` honoured CALLVAULT_ARCHIVE_SPOOL and `restore` did not (issue 26): both use the loader's."""
    import os
    import subprocess
    import sys

    dsn, _url, weeks = archived
    spool = tmp_path / "restore-spool"
    cli = str(Path(sys.executable).parent / "callvault")
    env = {**os.environ, "CALLVAULT_ARCHIVE_SPOOL": str(spool)}
    args = [cli, "restore", "--dsn", dsn, "--week", sorted(weeks)[0], "--into", "back"]
    done = subprocess.run(args, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert spool.is_dir(), "restore downloads into the configured spool"


def test_clearing_a_tenant_policy_that_is_not_there_says_so(dsn: str) -> None:
    run("init", "--dsn", dsn)
    tenant = TENANTS[0]
    result = run("archive", "policy", "--dsn", dsn, "--tenant", tenant, "--clear", ok=False)
    assert result.exit_code == 2 and tenant in result.stderr and "no archive policy" in result.stderr
    run("archive", "policy", "--dsn", dsn, "--tenant", tenant, "--keep", "2 years")
    run("archive", "policy", "--dsn", dsn, "--tenant", tenant, "--clear")  # there: cleared, exit 0
