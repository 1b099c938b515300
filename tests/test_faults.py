"""Fault injection for the archive: what callvault guarantees when things go wrong (docs/archive.md,
"Under faults"). Real Postgres + pg_partman, real processes, real files; each test asserts row counts
and content per tenant, not only exit codes.

Covered here: re-archive after a partial restore (and after late rows), a reader holding locks across
the detach (then maintenance while the detach is pending), ``maintain`` racing the archive on the same
week, a store failing mid-upload, and the modes of everything written. Kill -9 after each step
(including half-way through verify) and a full spool are in tests/test_archive.py; writer faults
(backend and server killed mid-COPY, exactly once after re-send) in tests/test_ingest.py.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from callvault.archive.pipeline import archive
from callvault.archive.steps import DropGuard
from callvault.config import Settings
from callvault.errors import Blocked
from callvault.maintain import maintain
from tests.helpers import fingerprints_match, new_dir, run, run_json
from tests.test_archive import AT, CLI, TENANTS, cli, exists, expected_archive, fill

FAST_LOCKS = 300  # ms: the lock budget for tests that wait on a held lock


def store_manifests(root: Path) -> dict[str, dict]:
    return {
        (d := json.loads(p.read_text()))["partition"]: d for p in (root / "call_logs" / "_manifests").glob("*.json")
    }


def store_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def manifest_keys(manifests: dict[str, dict]) -> set[str]:
    keys = {f"call_logs/_manifests/week={m['range']['from'][:10]}.json" for m in manifests.values()}
    for m in manifests.values():
        for entry in m["tenants"].values():
            keys |= {o["key"] for o in entry["objects"]}
    return keys


def tenants_of(doc: dict) -> dict[str, dict[str, object]]:
    return {t: {k: e[k] for k in ("rows", "digest", "min_us", "max_us")} for t, e in doc["tenants"].items()}


def side_counts(conn: psycopg.Connection, table: str) -> dict[str, int]:
    return dict(conn.execute(f"SELECT tenant_id::text, count(*) FROM {table} GROUP BY 1").fetchall())


@pytest.fixture
def filled(dsn: str, conn: psycopg.Connection) -> Settings:
    run("init", "--dsn", dsn)
    fill(conn, per_tenant_week=20)
    return Settings(dsn=dsn)


# ---------------------------------------------------------------- re-archive


def test_rearchive_after_partial_restore_keeps_every_tenant(
    filled: Settings, conn: psycopg.Connection, tmp_path: Path
) -> None:
    dsn, store = filled.dsn or "", new_dir(tmp_path / "store")
    expected = expected_archive(conn, filled)
    week_name = min(expected)
    run("archive", "--dsn", dsn, "--to", store.as_uri(), "--at", AT)
    first = store_manifests(store)[week_name]
    week = first["range"]["from"][:10]

    restored = run_json("restore", "--dsn", dsn, "--to", store.as_uri(), "--week", week, "--tenant", TENANTS[0])
    assert restored["tenants"] == {TENANTS[0]: expected[week_name][TENANTS[0]]["md5"][0]}
    run("archive", "--dsn", dsn, "--to", store.as_uri(), "--at", AT)  # the restored week goes again

    after = store_manifests(store)[week_name]
    assert fingerprints_match(after["tenants"], expected[week_name]), "every tenant archived for the week is listed"
    assert store_files(store) == manifest_keys(store_manifests(store)), "no object outside a manifest"
    listed = {m["partition"]: m["rows"] for m in run_json("archive", "list", "--dsn", dsn, "--to", store.as_uri())}
    assert listed[week_name] == sum(int(str(t["md5"][0])) for t in expected[week_name].values())

    first_load = run_json("restore", "--dsn", dsn, "--to", store.as_uri(), "--week", week, "--into", "week_back")
    assert side_counts(conn, "week_back") == {t: int(str(fp["md5"][0])) for t, fp in expected[week_name].items()}
    again = run_json("restore", "--dsn", dsn, "--to", store.as_uri(), "--week", week, "--into", "week_back")
    assert (first_load["inserted"], first_load["already_present"]) == (first_load["rows"], 0)
    assert (again["inserted"], again["already_present"]) == (0, first_load["rows"]), "restore says what it added"


def test_rearchive_merges_late_rows_with_what_was_archived(
    filled: Settings, conn: psycopg.Connection, tmp_path: Path
) -> None:
    dsn, store = filled.dsn or "", new_dir(tmp_path / "store")
    expected = expected_archive(conn, filled)
    week_name = min(expected)
    run("archive", "--dsn", dsn, "--to", store.as_uri(), "--at", AT)
    doc = store_manifests(store)[week_name]
    week, lo = doc["range"]["from"][:10], datetime.fromisoformat(doc["range"]["from"])
    run("restore", "--dsn", dsn, "--to", store.as_uri(), "--week", week, "--tenant", TENANTS[0])
    # late rows for a tenant whose week is only in the archive: they land in the restored partition
    conn.execute(
        "INSERT INTO call_logs (tenant_id, call_id, started_at, transcript) "
        "SELECT %s, gen_random_uuid(), %s + g * interval '1 hour', 'late ' || g FROM generate_series(1, 7) g",
        (TENANTS[1], lo),
    )
    run("archive", "--dsn", dsn, "--to", store.as_uri(), "--at", AT)

    after = tenants_of(store_manifests(store)[week_name])
    rows = {t: int(str(fp["md5"][0])) for t, fp in expected[week_name].items()}
    assert {t: int(str(e["rows"])) for t, e in after.items()} == {**rows, TENANTS[1]: rows[TENANTS[1]] + 7}
    assert store_files(store) == manifest_keys(store_manifests(store))
    run("restore", "--dsn", dsn, "--to", store.as_uri(), "--week", week, "--into", "week_back")
    assert side_counts(conn, "week_back") == {**rows, TENANTS[1]: rows[TENANTS[1]] + 7}
    late = conn.execute("SELECT count(*) FROM week_back WHERE transcript LIKE 'late %'").fetchone()
    assert late == (7,)


# ---------------------------------------------------------------- locks across the detach


def test_reader_holding_locks_then_maintain_premakes_and_finishes_the_detach(realtime_dsn: str, tmp_path: Path) -> None:
    dsn = realtime_dsn
    run("init", "--dsn", dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        fill(conn, per_tenant_week=10)
        settings = Settings(dsn=dsn, lock_timeout_ms=FAST_LOCKS)
        # this server keeps the real clock (lock timeouts must fire) while the suite may run under `faketime`:
        # the archive's instant is three weeks past *its* now, as AT is for the suite's own cluster
        at = (conn.execute("SELECT now()").fetchone()[0] + timedelta(weeks=3)).isoformat()
        expected = expected_archive(conn, settings, at)
        total = conn.execute("SELECT tenant_id::text, count(*) FROM call_logs GROUP BY 1").fetchall()
        store = new_dir(tmp_path / "store").as_uri()
        with psycopg.connect(dsn) as reader:
            reader.execute("SELECT count(*) FROM call_logs")  # idle in transaction, holding its locks
            pid = reader.info.backend_pid
            rep = archive(settings, store_url=store, at=datetime.fromisoformat(at), spool=tmp_path / "spool")
            assert rep.failed and rep.failed[0].exit_code == 75, rep.to_dict()
            assert f"pid {pid}" in (rep.failed[0].error or ""), "the message names the session in the way"
            assert all(p.exit_code == 75 for p in rep.failed), "no raw 'already pending detach' error"
            pending = conn.execute("SELECT count(*) FROM pg_inherits WHERE inhdetachpending").fetchone()
            assert pending == (1,)

            # maintenance while the detach cannot finish: it still premakes, then says why it exits 75
            with pytest.raises(Blocked, match=f"pid {pid}") as blocked:
                maintain(settings, at=datetime.fromisoformat(at))
            assert "created" in str(blocked.value)
            plan = run_json("plan", "--dsn", dsn, "--at", at)
            assert plan["create"] == [], "every partition planned at AT was premade despite the pending detach"
            reader.rollback()

        done = maintain(settings, at=datetime.fromisoformat(at))  # the session is gone: finished now
        assert len(done.finalized) == 1 and done.blocked is None
        assert conn.execute("SELECT count(*) FROM pg_inherits WHERE inhdetachpending").fetchone() == (0,)
        rep = archive(settings, store_url=store, at=datetime.fromisoformat(at), spool=tmp_path / "spool")
        assert not rep.failed, rep.to_dict()
        assert not any(exists(conn, n) for n in expected)
        archived = {
            t: sum(int(str(m["tenants"][t]["rows"])) for m in store_manifests(tmp_path / "store").values())
            for t in TENANTS
        }
        left = dict(conn.execute("SELECT tenant_id::text, count(*) FROM call_logs GROUP BY 1").fetchall())
        assert {t: archived[t] + left.get(t, 0) for t in TENANTS} == dict(total), "0 rows lost or doubled"


def test_maintain_cli_with_a_pending_detach_exits_75_in_one_line(realtime_dsn: str) -> None:
    dsn = realtime_dsn
    run("init", "--dsn", dsn)
    with psycopg.connect(dsn, autocommit=True) as conn, psycopg.connect(dsn) as reader:
        fill(conn, per_tenant_week=2)
        name = min(expected_archive(conn, Settings(dsn=dsn)))
        reader.execute("SELECT count(*) FROM call_logs")
        conn.execute("SET lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            conn.execute(f"ALTER TABLE call_logs DETACH PARTITION {name} CONCURRENTLY")
        assert run_json("status", "--dsn", dsn)["detach_pending"] == [name]
        health = cli("health", "--dsn", dsn, "--json")
        assert health.returncode == 3 and any("pending detach" in p for p in json.loads(health.stdout)["problems"])
        res = subprocess.run([CLI, "maintain", "--dsn", dsn, "--at", AT], capture_output=True, text=True,
                             env={**os.environ, "CALLVAULT_LOCK_TIMEOUT_MS": str(FAST_LOCKS)})  # fmt: skip
        assert res.returncode == 75, res.stderr
        assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
        assert name in res.stderr and f"pid {reader.info.backend_pid}" in res.stderr
        reader.rollback()
    ok = cli("maintain", "--dsn", dsn, "--at", AT, "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["finalized"] == [name]


# ---------------------------------------------------------------- archive vs pg_partman's retention


@pytest.mark.parametrize("round_", range(3))
def test_archive_and_maintain_race_for_the_same_weeks(
    filled: Settings, conn: psycopg.Connection, tmp_path: Path, round_: int
) -> None:
    dsn, store = filled.dsn or "", new_dir(tmp_path / "store")
    expected = expected_archive(conn, filled)
    before = dict(conn.execute("SELECT tenant_id::text, count(*) FROM call_logs GROUP BY 1").fetchall())
    env = {**os.environ, "CALLVAULT_ARCHIVE_SPOOL": str(tmp_path / "spool")}
    cmds = [
        [CLI, "archive", "--dsn", dsn, "--to", store.as_uri(), "--at", AT, "--json"],
        [CLI, "maintain", "--dsn", dsn, "--at", AT, "--json", "--wait"],
    ]
    if round_ % 2:
        cmds.reverse()
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for c in cmds]
    results = [(p.args[1], *p.communicate()) for p in procs]
    for (what, _out, err), p in zip(results, procs, strict=True):
        assert p.returncode in (0, 75), f"{what} exited {p.returncode}: {err}"  # never 69 or 1 for a race
    reports = {what: json.loads(out) for what, out, _err in results if out.strip()}
    if "maintain" in reports:
        assert reports["maintain"]["dropped"] == [], "pg_partman never drops (retention_keep_table); archive does"
    final = cli("archive", "--dsn", dsn, "--to", store.as_uri(), "--at", AT, env=env)
    assert final.returncode == 0, final.stderr
    got = store_manifests(store)
    assert set(got) == set(expected) and all(fingerprints_match(d["tenants"], expected[n]) for n, d in got.items())
    assert not any(exists(conn, n) for n in expected)
    left = dict(conn.execute("SELECT tenant_id::text, count(*) FROM call_logs GROUP BY 1").fetchall())
    archived = {t: sum(int(str(d["tenants"].get(t, {"rows": 0})["rows"])) for d in got.values()) for t in before}
    assert {t: archived[t] + left.get(t, 0) for t in before} == before, "0 rows lost or doubled"
    journal = conn.execute("SELECT partition, step FROM callvault.archive_journal").fetchall()
    assert dict(journal) == dict.fromkeys(expected, "dropped")


# ---------------------------------------------------------------- store failing mid-upload


def test_store_failing_mid_upload_keeps_the_partition_and_leaves_no_strays(
    filled: Settings, conn: psycopg.Connection, tmp_path: Path
) -> None:
    dsn, store = filled.dsn or "", new_dir(tmp_path / "store")
    expected = expected_archive(conn, filled)
    # a file where the fourth tenant's directory must go: every write below it fails (ENOTDIR)
    (store / "call_logs").mkdir(parents=True)
    obstacle = store / "call_logs" / f"tenant_id={TENANTS[3]}"
    obstacle.write_text("in the way")
    failed = cli("archive", "--dsn", dsn, "--to", store.as_uri(), "--at", AT)
    assert failed.returncode == 69, failed.stderr
    assert "cannot write" in failed.stderr and "Traceback" not in failed.stderr
    assert exists(conn, min(expected)), "nothing is dropped before its archive is verified"
    obstacle.unlink()
    ok = cli("archive", "--dsn", dsn, "--to", store.as_uri(), "--at", AT)
    assert ok.returncode == 0, ok.stderr
    got = store_manifests(store)
    assert set(got) == set(expected) and all(fingerprints_match(d["tenants"], expected[n]) for n, d in got.items())
    assert store_files(store) == manifest_keys(got), "no temporary or duplicate object is left in the store"


# ---------------------------------------------------------------- file modes


def _modes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix() or ".": stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def test_everything_written_is_private_to_the_running_user(
    filled: Settings, conn: psycopg.Connection, tmp_path: Path
) -> None:
    dsn, store, spool = filled.dsn or "", new_dir(tmp_path / "store"), tmp_path / "spool"
    env = {"CALLVAULT_ARCHIVE_SPOOL": str(spool), "CALLVAULT_FAULT_AFTER": "upload"}
    killed = cli("archive", "--dsn", dsn, "--to", store.as_uri(), "--at", AT, env=env)  # spool files stay
    assert killed.returncode < 0
    for root in (store, spool):
        modes = _modes(root)
        files = {k: m for k, m in modes.items() if (root / k).is_file()}
        dirs = {k: m for k, m in modes.items() if not (root / k).is_file()}
        assert files and set(files.values()) == {0o600}, f"{root}: {files}"
        assert set(dirs.values()) == {0o700}, f"{root}: {dirs}"
    ok = cli("archive", "--dsn", dsn, "--to", store.as_uri(), "--at", AT, env={"CALLVAULT_ARCHIVE_SPOOL": str(spool)})
    assert ok.returncode == 0, ok.stderr
    assert {m for k, m in _modes(store).items() if (store / k).is_file()} == {0o600}


def test_a_spool_someone_else_prepared_is_refused(filled: Settings, conn: psycopg.Connection, tmp_path: Path) -> None:
    dsn, store = filled.dsn or "", new_dir(tmp_path / "store").as_uri()
    expected = expected_archive(conn, filled)
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o777)
    os.chmod(theirs, 0o777)
    os.chown(theirs, 65534, 65534)  # another user's directory at the path callvault would use
    res = cli("archive", "--dsn", dsn, "--to", store, "--at", AT, env={"CALLVAULT_ARCHIVE_SPOOL": str(theirs)})
    assert res.returncode == 2 and "uid 65534" in res.stderr and str(theirs) in res.stderr, res.stderr
    assert all(exists(conn, n) for n in expected), "nothing detached when the spool is refused"

    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    res = cli("archive", "--dsn", dsn, "--to", store, "--at", AT, env={"CALLVAULT_ARCHIVE_SPOOL": str(link)})
    assert res.returncode == 2 and "symlink" in res.stderr, res.stderr

    shared = tmp_path / "shared-store"
    shared.mkdir()
    os.chmod(shared, 0o777)  # an archive directory anyone may write to: objects could be replaced
    res = cli("archive", "--dsn", dsn, "--to", shared.as_uri(), "--at", AT)
    assert res.returncode == 2 and "writable by other users" in res.stderr, res.stderr
    assert all(exists(conn, n) for n in expected)

    mine = tmp_path / "mine"
    mine.mkdir()
    os.chmod(mine, 0o777)  # ours but open to everyone: tightened, then used
    res = cli("archive", "--dsn", dsn, "--to", store, "--at", AT, env={"CALLVAULT_ARCHIVE_SPOOL": str(mine)})
    assert res.returncode == 0, res.stderr
    assert stat.S_IMODE(mine.stat().st_mode) == 0o700
    assert not any(exists(conn, n) for n in expected)


def test_pg_cron_procedure_premakes_despite_a_pending_detach(realtime_dsn: str) -> None:
    """What pg_cron runs (``CALL callvault.run_maintenance``) finishes a pending detach, or, when a session
    keeps it pending, still premakes (retention off inside its own transaction only) and warns."""
    dsn = realtime_dsn
    run("init", "--dsn", dsn)
    with psycopg.connect(dsn, autocommit=True) as conn, psycopg.connect(dsn) as reader:
        parts = [r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'public.call_logs'::regclass ORDER BY c.relname"
        )]  # fmt: skip
        oldest, newest = parts[0], parts[-1]
        conn.execute(f"DROP TABLE {newest}")  # something for premake to do
        retention = conn.execute("SELECT retention FROM partman.part_config").fetchone()
        reader.execute("SELECT count(*) FROM call_logs")
        conn.execute("SET lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            conn.execute(f"ALTER TABLE call_logs DETACH PARTITION {oldest} CONCURRENTLY")
        warnings: list[str] = []
        conn.add_notice_handler(lambda d: warnings.append(d.message_primary or ""))
        conn.execute("CALL callvault.run_maintenance('public.call_logs')")
        assert exists(conn, newest), "premade although a detach is pending"
        assert any("cannot finish" in w for w in warnings), warnings
        assert conn.execute("SELECT retention FROM partman.part_config").fetchone() == retention
        assert conn.execute("SELECT count(*) FROM pg_inherits WHERE inhdetachpending").fetchone() == (1,)
        reader.rollback()
        conn.execute("CALL callvault.run_maintenance('public.call_logs')")
        assert conn.execute("SELECT count(*) FROM pg_inherits WHERE inhdetachpending").fetchone() == (0,)
        assert exists(conn, oldest), "finished as a detach: the table is kept for the archive"


# ---------------------------------------------------------------- drop


@pytest.mark.parametrize("point", ["export", "verify"])
def test_a_row_written_into_the_detached_table_after_export_keeps_it_and_is_archived_next_run(
    filled: Settings, conn: psycopg.Connection, tmp_path: Path, point: str
) -> None:
    """Killed after export (the resumed run uploads, so its drop guard counts) or after verify (the drop
    counts itself), the detached table gets one more row (someone wrote into it by name): the drop
    refuses (the table is kept, the run exits non-zero naming it), and the next run archives it again,
    the extra row with it. Nothing is dropped that the archive does not hold."""
    dsn, store = filled.dsn or "", new_dir(tmp_path / "store").as_uri()
    expected = expected_archive(conn, filled)
    killed = cli("archive", "--dsn", dsn, "--to", store, "--at", AT, env={"CALLVAULT_FAULT_AFTER": point})
    assert killed.returncode < 0, killed.stderr
    first = min(expected)
    assert exists(conn, first), f"{point}: not yet dropped"
    tenant = next(iter(expected[first]))
    want = side_counts(conn, first)
    want[tenant] += 1
    conn.execute(
        f"INSERT INTO {first} (tenant_id, call_id, started_at, ended_at, duration_sec, transcript) "
        f"SELECT tenant_id, gen_random_uuid(), started_at, ended_at, 1, 'late' FROM {first} "
        "WHERE tenant_id = %s LIMIT 1",
        (tenant,),
    )
    conn.commit()
    refused = cli("archive", "--dsn", dsn, "--to", store, "--at", AT)
    assert refused.returncode != 0 and first in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
    assert exists(conn, first), "kept: it holds a row the archive does not"
    again = cli("archive", "--dsn", dsn, "--to", store, "--at", AT)
    assert again.returncode == 0, again.stderr
    assert not exists(conn, first)
    doc = store_manifests(tmp_path / "store")[first]
    rows = {t: int(e["rows"]) for t, e in doc["tenants"].items()}
    assert rows == want, "the archive holds the late row too"


def test_the_drop_guard_counts_under_a_lock_no_writer_passes(settings: Settings, conn: psycopg.Connection) -> None:
    """The drop's guard (taken while upload and verify run) holds the table in SHARE mode: its count is
    what the drop will drop, a writer cannot have its lock (asked with NOWAIT: a server's lock_timeout never
    fires under a faked clock ahead of the real one, docs/design.md), readers go on; closing it lets the
    writer in."""
    conn.execute("CREATE TABLE guarded (n int)")
    conn.execute("INSERT INTO guarded SELECT generate_series(1, 7)")
    conn.commit()
    table = sql.Identifier(settings.schema, "guarded")
    guard = DropGuard(settings, table, "guarded")
    try:
        assert guard.counted() == 7
        with psycopg.connect(settings.dsn or "") as other:
            assert other.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone() == (7,)
            with pytest.raises(psycopg.errors.LockNotAvailable):
                other.execute(sql.SQL("LOCK TABLE {} IN ROW EXCLUSIVE MODE NOWAIT").format(table))
    finally:
        guard.close()
    with psycopg.connect(settings.dsn or "") as other:
        other.execute(sql.SQL("LOCK TABLE {} IN ROW EXCLUSIVE MODE NOWAIT").format(table))
        other.execute(sql.SQL("INSERT INTO {} VALUES (8)").format(table))
    assert conn.execute("SELECT count(*) FROM guarded").fetchone() == (8,)


def test_a_drop_guard_that_cannot_lock_leaves_the_count_to_the_drop(settings: Settings) -> None:
    """No table (or no lock within lock_timeout): no count, no error; the drop counts itself."""
    guard = DropGuard(settings, sql.Identifier(settings.schema, "no_such_table"), "no_such_table")
    try:
        assert guard.counted() is None
    finally:
        guard.close()
