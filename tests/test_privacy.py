"""Erasure and legal holds, end to end on a real cluster, real files and a real S3 server.

One subject's calls sit in hot weeks, in a week detached but not yet archived, in archived weeks and in
the quarantine; ``callvault erase`` removes them from every tier (no row in Postgres, none through
DuckDB, not a byte of its marker in any archived file) and leaves everyone else's rows as they were; a
killed erase is finished by ``erase resume``; a legal hold makes erase and prune refuse.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import duckdb
import psycopg
import pytest

from callvault.errors import HoldRefused, InvalidSetting
from tests.helpers import new_dir, run, run_json
from tests.test_archive import AT, CLI, TENANTS, fill

SUBJECT = "+15550000002"  # the caller to erase: metadata.caller
MARKER = "ERASE-ME-7f3a9c"  # in each of that caller's transcripts, searched for as bytes afterwards
TENANT = TENANTS[1]


def seed(conn: psycopg.Connection) -> None:
    """fill(), then a caller per call (four callers per tenant) and the marker in the subject's transcripts."""
    fill(conn, per_tenant_week=30)
    conn.execute(
        "UPDATE call_logs SET metadata = metadata "
        "|| jsonb_build_object('caller', '+1555000000' || ((metadata->>'g')::int % 4))"
    )
    conn.execute(
        "UPDATE call_logs SET transcript = %s || ' ' || coalesce(transcript, '') "
        "WHERE tenant_id = %s AND metadata->>'caller' = %s",
        (MARKER, TENANT, SUBJECT),
    )


def per_tenant_week(conn: psycopg.Connection, table: str = "call_logs") -> dict[tuple[str, str], int]:
    rows = conn.execute(
        f"SELECT tenant_id::text, date_trunc('week', started_at)::date::text, count(*) FROM {table} GROUP BY 1, 2"
    ).fetchall()
    return {(t, w): int(n) for t, w, n in rows}


def subject_rows(conn: psycopg.Connection, table: str = "call_logs") -> int:
    """The subject's rows of TENANT (the same number calls other tenants too: those are not theirs)."""
    query = f"SELECT count(*) FROM {table} WHERE tenant_id = %s AND metadata->>'caller' = %s"
    return int(conn.execute(query, (TENANT, SUBJECT)).fetchone()[0])


def archive_rows(root: Path) -> list[tuple[str, str | None]]:
    """(tenant, caller) of every archived row, read with DuckDB straight from the files."""
    files = [str(p) for p in root.rglob("*.parquet")]
    if not files:
        return []
    con = duckdb.connect()
    return con.execute(
        "SELECT CAST(tenant_id AS VARCHAR), json_extract_string(metadata, '$.caller') FROM read_parquet(?)", [files]
    ).fetchall()


def marker_in_files(root: Path) -> list[str]:
    """Every file under ``root`` holding the marker: as raw bytes, or (objects are zstd-compressed Parquet)
    in any value once decompressed."""
    import pyarrow.parquet as pq

    found = []
    for p in root.rglob("*"):
        if not p.is_file():
            continue
        raw = MARKER.encode() in p.read_bytes()
        if raw or (p.suffix == ".parquet" and MARKER in str(pq.read_table(p).to_pylist())):
            found.append(str(p))
    return found


@pytest.fixture
def world(dsn: str, conn: psycopg.Connection, tmp_path: Path) -> dict[str, Any]:
    run("init", "--dsn", dsn)
    seed(conn)
    store = new_dir(tmp_path / "store")
    run("archive", "--dsn", dsn, "--to", store.as_uri(), "--at", AT)
    # one more week detached (as retention does) and not yet archived
    newest_attached = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'public.call_logs'::regclass ORDER BY c.relname LIMIT 1"
    ).fetchone()[0]
    conn.execute(f"ALTER TABLE call_logs DETACH PARTITION {newest_attached}")
    # the subject's call in the quarantine (a row the validator refused), and another caller's
    for caller in (SUBJECT, "+15550000001"):
        bad = {"tenant_id": TENANT, "call_id": "not-a-uuid", "started_at": "2026-01-01T00:00:00Z",
               "metadata": {"caller": caller}, "transcript": MARKER if caller == SUBJECT else "other"}  # fmt: skip
        conn.execute(
            "INSERT INTO callvault.quarantine (target_table, reason, raw) "
            "VALUES ('public.call_logs', 'bad call_id', %s)",
            (json.dumps(bad),),
        )
    run("privacy", "subject", "--dsn", dsn, "--metadata-key", "caller")
    return {"dsn": dsn, "store": store, "detached": newest_attached}


def test_erase_a_subject_from_every_tier(world: dict[str, Any], conn: psycopg.Connection) -> None:
    dsn, store, detached = world["dsn"], world["store"], world["detached"]
    assert subject_rows(conn) > 0 and subject_rows(conn, detached) > 0
    archived_before = archive_rows(store)
    assert (TENANT, SUBJECT) in archived_before and marker_in_files(store)
    hot_before, detached_before = per_tenant_week(conn), per_tenant_week(conn, detached)
    subject_hot = {k: v for k, v in per_tenant_week_of_subject(conn).items()}

    receipt = run_json("erase", "--dsn", dsn, "--to", store.as_uri(), "--tenant-id", TENANT, "--subject", SUBJECT)
    assert receipt["done"] and receipt["kind"] == "subject"
    removed = receipt["removed"]
    assert removed["hot_rows"] == sum(subject_hot.values())
    assert removed["detached_rows"] > 0 and removed["quarantine_rows"] == 1
    assert removed["archive_rows"] == sum(1 for t, c in archived_before if t == TENANT and c == SUBJECT)
    assert SUBJECT not in json.dumps(receipt) and MARKER not in json.dumps(receipt), "the receipt holds no subject"

    # Postgres: none of the subject's rows, everyone else's untouched (counts per tenant and week)
    assert subject_rows(conn) == 0 and subject_rows(conn, detached) == 0
    expect = {k: v - subject_hot.get(k, 0) for k, v in hot_before.items()}
    assert per_tenant_week(conn) == {k: v for k, v in expect.items() if v}
    assert sum(per_tenant_week(conn, detached).values()) == sum(detached_before.values()) - removed["detached_rows"]
    quarantined = [r[0] for r in conn.execute("SELECT raw FROM callvault.quarantine")]
    assert len(quarantined) == 1 and MARKER not in quarantined[0]
    # the archive: through DuckDB and as bytes
    after = archive_rows(store)
    assert (TENANT, SUBJECT) not in after and not marker_in_files(store)
    assert sorted(after) == sorted(r for r in archived_before if not (r[0] == TENANT and r[1] == SUBJECT))
    # an affected week still restores and verifies
    oldest = min(m["period"] for m in run_json("archive", "list", "--dsn", dsn, "--to", store.as_uri()))
    run("restore", "--dsn", dsn, "--to", store.as_uri(), "--week", oldest, "--into", "restored_side")
    assert subject_rows(conn, "restored_side") == 0 and sum(per_tenant_week(conn, "restored_side").values()) > 0
    # the receipt is kept, without the subject
    status = run_json("erase", "status", receipt["id"], "--dsn", dsn)
    assert status["removed"] == removed and status["done"]
    row = conn.execute("SELECT selector FROM callvault.erasures WHERE id = %s", (receipt["id"],)).fetchone()
    assert row == (None,)
    # asked again: nothing of that subject is left anywhere, said in one line
    again = run("erase", "--dsn", dsn, "--to", store.as_uri(), "--tenant-id", TENANT, "--subject", SUBJECT, ok=False)
    assert again.exit_code == InvalidSetting.exit_code and "nothing found" in again.stderr


def per_tenant_week_of_subject(conn: psycopg.Connection) -> dict[tuple[str, str], int]:
    rows = conn.execute(
        "SELECT tenant_id::text, date_trunc('week', started_at)::date::text, count(*) FROM call_logs "
        "WHERE tenant_id = %s AND metadata->>'caller' = %s GROUP BY 1, 2",
        (TENANT, SUBJECT),
    ).fetchall()
    return {(t, w): int(n) for t, w, n in rows}


def test_an_erase_killed_at_each_step_is_finished_by_resume(world: dict[str, Any], conn: psycopg.Connection) -> None:
    dsn, store = world["dsn"], world["store"]
    env = {**os.environ, "CALLVAULT_DSN": dsn}
    proc = subprocess.Popen(
        [CLI, "erase", "--to", store.as_uri(), "--tenant-id", TENANT, "--subject", SUBJECT, "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    # kill it as soon as the request is journaled past its first step
    for _ in range(2000):
        row = conn.execute("SELECT step FROM callvault.erasures").fetchone()
        if (row is not None and row[0] != "hot") or proc.poll() is not None:
            break
        conn.execute("SELECT pg_sleep(0.005)")
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=120)
    done = run_json("erase", "resume", "--dsn", dsn, "--to", store.as_uri())
    assert all(r["done"] for r in done)
    assert subject_rows(conn) == 0 and not marker_in_files(store)
    assert (TENANT, SUBJECT) not in archive_rows(store)
    again = run_json("erase", "resume", "--dsn", dsn, "--to", store.as_uri())
    assert again == []


def test_erase_from_an_s3_archive_leaves_no_version(dsn: str, conn: psycopg.Connection, bucket: str) -> None:
    run("init", "--dsn", dsn)
    seed(conn)
    name = bucket[len("s3://") :].split("/", 1)[0]
    s3 = boto3.client("s3")
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    run("archive", "--dsn", dsn, "--to", bucket, "--at", AT)
    run("privacy", "subject", "--dsn", dsn, "--metadata-key", "caller")
    receipt = run_json("erase", "--dsn", dsn, "--to", bucket, "--tenant-id", TENANT, "--subject", SUBJECT)
    assert receipt["done"] and receipt["removed"]["archive_objects_deleted"] > 0
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=name):
        for v in page.get("Versions", []):
            body = s3.get_object(Bucket=name, Key=v["Key"], VersionId=v["VersionId"])["Body"].read()
            assert MARKER.encode() not in body, f"{v['Key']} version {v['VersionId']} still holds the subject"


def test_a_hold_refuses_erase_and_prune_until_released(world: dict[str, Any], conn: psycopg.Connection) -> None:
    dsn, store = world["dsn"], world["store"]
    placed = run_json("hold", "place", "--dsn", dsn, "--tenant-id", TENANT, "--subject", SUBJECT,
                      "--reason", "case 2026-117")  # fmt: skip
    assert placed["subject_sha256"] and SUBJECT not in json.dumps(placed)
    refused = run("erase", "--dsn", dsn, "--to", store.as_uri(), "--tenant-id", TENANT, "--subject", SUBJECT,
                  ok=False)  # fmt: skip
    assert refused.exit_code == HoldRefused.exit_code and f"legal hold {placed['id']}" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and SUBJECT not in refused.stderr
    assert subject_rows(conn) > 0, "nothing was erased"
    run("archive", "policy", "--dsn", dsn, "--keep", "1 day")
    late = datetime.fromisoformat(AT).replace(year=datetime.fromisoformat(AT).year + 1).isoformat()
    pruned = run("archive", "prune", "--dsn", dsn, "--to", store.as_uri(), "--at", late, ok=False)
    assert pruned.exit_code == HoldRefused.exit_code and "archive prune" in pruned.stderr
    assert archive_rows(store), "nothing was pruned"
    # another tenant's hold does not cover this subject; the released hold no longer refuses
    assert run_json("hold", "list", "--dsn", dsn)[0]["id"] == placed["id"]
    run("hold", "release", str(placed["id"]), "--dsn", dsn)
    assert run_json("hold", "list", "--dsn", dsn) == []
    assert run_json("hold", "list", "--all", "--dsn", dsn)[0]["released_by"]
    assert run_json("erase", "--dsn", dsn, "--to", store.as_uri(), "--tenant-id", TENANT, "--subject", SUBJECT)["done"]
    run("archive", "prune", "--dsn", dsn, "--to", store.as_uri(), "--at", late)


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--tenant-id", "nope", "--subject", SUBJECT], 2, "--tenant-id 'nope' is not a UUID"),
        (["--tenant-id", TENANT], 2, "exactly one of"),
        (["--tenant-id", TENANT, "--all-calls"], 2, "add --yes"),
        (["--tenant-id", TENANTS[0].replace("0001", "0999"), "--subject", SUBJECT], 2, "nothing found"),
        (["--tenant-id", TENANT, "--call-id", "x1"], 2, "call id 'x1' is not a UUID"),
    ],
)
def test_bad_erase_requests_are_one_line(world: dict[str, Any], args: list[str], code: int, says: str) -> None:
    res = run("erase", "--dsn", world["dsn"], "--to", world["store"].as_uri(), *args, ok=False)
    assert res.exit_code == code and says in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_erase_status_of_an_unknown_or_malformed_request(dsn: str) -> None:
    run("init", "--dsn", dsn)
    bad = run("erase", "status", "not-a-request", "--dsn", dsn, ok=False)
    assert bad.exit_code == 2 and "is not a UUID" in bad.stderr
    unknown = run("erase", "status", "8d0f3c2e-1b5a-4c7d-9e8f-0a1b2c3d4e5f", "--dsn", dsn, ok=False)
    assert unknown.exit_code == 2 and "does not exist" in unknown.stderr


def test_erase_without_a_subject_set_says_how(dsn: str, conn: psycopg.Connection) -> None:
    run("init", "--dsn", dsn)
    seed(conn)
    res = run("erase", "--dsn", dsn, "--tenant-id", TENANT, "--subject", SUBJECT, ok=False)
    assert res.exit_code == 2 and "callvault privacy subject --metadata-key" in res.stderr
    bad = run("privacy", "subject", "--dsn", dsn, "--metadata-key", "caller; drop", ok=False)
    assert bad.exit_code == 2 and "not a metadata key path" in bad.stderr


# ---------------------------------------------------------------- transcripts shorter-lived than calls


def transcripts_by_age(conn: psycopg.Connection, cutoff: str, tenant: str | None = None) -> tuple[int, int]:
    """(old calls still with a transcript, newer calls without one that had one)."""
    who = "AND tenant_id = %(t)s" if tenant else ""
    old = conn.execute(
        f"SELECT count(*) FROM call_logs WHERE started_at < %(c)s AND transcript IS NOT NULL {who}",
        {"c": cutoff, "t": tenant},
    ).fetchone()[0]
    return int(old), 0


def test_transcripts_expire_before_their_calls_hot_and_archived(dsn: str, conn: psycopg.Connection,
                                                                 tmp_path: Path) -> None:  # fmt: skip
    from callvault.config import Settings
    from callvault.query import Reader

    run("init", "--dsn", dsn)
    seed(conn)
    store = new_dir(tmp_path / "store")
    run("archive", "--dsn", dsn, "--to", store.as_uri(), "--at", AT)
    at = datetime.fromisoformat(AT)
    cutoff = (at - timedelta(days=30)).isoformat()
    with_transcript = conn.execute(
        "SELECT count(*) FILTER (WHERE transcript IS NOT NULL AND started_at >= %s), count(*) FROM call_logs",
        (cutoff,),
    ).fetchone()
    metadata_before = conn.execute("SELECT id, metadata FROM call_logs ORDER BY id").fetchall()
    got = run_json("privacy", "transcripts", "--dsn", dsn, "--keep", "30 days")
    assert got["default"] == "30 days"

    rep = run_json("privacy", "expire", "--dsn", dsn, "--to", store.as_uri(), "--at", AT, "--batch-rows", "200")
    assert rep["hot_rows"] > 0 and rep["batches"] >= rep["hot_rows"] // 200 and rep["wal_bytes"] > 0
    assert transcripts_by_age(conn, cutoff)[0] == 0, "no transcript older than 30 days is left in Postgres"
    assert (
        conn.execute(
            "SELECT count(*) FILTER (WHERE transcript IS NOT NULL AND started_at >= %s), count(*) FROM call_logs",
            (cutoff,),
        ).fetchone()
        == with_transcript
    ), "newer transcripts and every call stay"
    assert conn.execute("SELECT id, metadata FROM call_logs ORDER BY id").fetchall() == metadata_before
    # archived weeks are older than 30 days: their objects lose the transcripts, keep everything else
    assert rep["archive_periods"] > 0 and rep["archive_objects_deleted"] > 0
    files = [str(p) for p in store.rglob("*.parquet")]
    con = duckdb.connect()
    assert con.execute("SELECT count(transcript), count(*) FROM read_parquet(?)", [files]).fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM read_parquet(?)", [files]).fetchone()[0] > 0
    assert not marker_in_files(store)
    # the Reader: an old call's metadata, no transcript
    old = conn.execute(
        "SELECT tenant_id, call_id, started_at FROM call_logs WHERE started_at < %s ORDER BY started_at LIMIT 1",
        (cutoff,),
    ).fetchone()
    with psycopg.connect(dsn) as rc:
        record = Reader(rc, Settings(dsn=dsn)).get_call(old[0], old[1], old[2])
    assert record is not None and record.transcript is None and record.metadata and "caller" in record.metadata
    # an archived week still restores and verifies; running again has nothing to do
    oldest = min(m["period"] for m in run_json("archive", "list", "--dsn", dsn, "--to", store.as_uri()))
    run("restore", "--dsn", dsn, "--to", store.as_uri(), "--week", oldest, "--into", "restored_side")
    assert conn.execute("SELECT count(transcript) FROM restored_side").fetchone() == (0,)
    again = run_json("privacy", "expire", "--dsn", dsn, "--to", store.as_uri(), "--at", AT)
    assert again["hot_rows"] == 0 and again["archive_periods"] == 0


def test_transcript_expiry_is_bounded_and_per_tenant(dsn: str, conn: psycopg.Connection) -> None:
    run("init", "--dsn", dsn)
    seed(conn)
    at = datetime.fromisoformat(AT) - timedelta(weeks=3)  # the real now, give or take: nothing archived
    cutoff = (at - timedelta(days=7)).isoformat()
    others_before = conn.execute("SELECT count(transcript) FROM call_logs WHERE tenant_id <> %s", (TENANT,)).fetchone()
    run("privacy", "transcripts", "--dsn", dsn, "--tenant-id", TENANT, "--keep", "7 days")
    first = run_json("privacy", "expire", "--dsn", dsn, "--at", at.isoformat(), "--batch-rows", "50",
                     "--max-rows", "120")  # fmt: skip
    assert first["hot_rows"] == 120 and first["batches"] >= 3 and first["more"]  # at most 50 rows a batch
    rest = run_json("privacy", "expire", "--dsn", dsn, "--at", at.isoformat())
    assert not rest["more"] and transcripts_by_age(conn, cutoff, TENANT)[0] == 0
    assert conn.execute("SELECT count(transcript) FROM call_logs WHERE tenant_id <> %s", (TENANT,)).fetchone() == (
        others_before
    ), "other tenants (no policy of theirs, no default) keep theirs"
    bad = run("privacy", "transcripts", "--dsn", dsn, "--keep", "thirty days", ok=False)
    assert bad.exit_code == 2 and len(bad.stderr.strip().splitlines()) == 1
    cleared = run("privacy", "transcripts", "--dsn", dsn, "--clear", ok=False)
    assert cleared.exit_code == 2 and "no transcript policy" in cleared.stderr


def test_erase_waits_for_mirrors_to_confirm_the_deletes(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A mirror's subscription that has not confirmed the WAL past the deletes (a target down) leaves the
    request open, exit 75 in one line; once it confirms, `erase resume` finishes and counts it."""
    from callvault.privacy import erase as eraser

    monkeypatch.setattr(eraser, "MIRROR_WAIT_S", 1.0)
    dsn, store = world["dsn"], world["store"]
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("CREATE PUBLICATION callvault_mirror_t FOR TABLE call_logs WITH (publish_via_partition_root)")
        admin.execute("SELECT pg_create_logical_replication_slot('callvault_mirror_t', 'pgoutput')")
        try:
            res = run("erase", "--dsn", dsn, "--to", store.as_uri(), "--tenant-id", TENANT, "--subject", SUBJECT,
                      ok=False)  # fmt: skip
            assert res.exit_code == 75 and "callvault_mirror_t" in res.stderr
            assert len(res.stderr.strip().splitlines()) == 1 and SUBJECT not in res.stderr
            assert subject_rows(admin) == 0, "this database's tiers are erased meanwhile"
            assert admin.execute("SELECT step FROM callvault.erasures").fetchone() == ("archive",)
            admin.execute("SELECT pg_replication_slot_advance('callvault_mirror_t', pg_current_wal_lsn())")
            done = run_json("erase", "resume", "--dsn", dsn, "--to", store.as_uri())
            assert [r["done"] for r in done] == [True] and done[0]["removed"]["mirrors_confirmed"] == 1
        finally:
            admin.execute("SELECT pg_drop_replication_slot('callvault_mirror_t')")
            admin.execute("DROP PUBLICATION callvault_mirror_t")


def test_erase_reads_only_the_archived_periods_whose_filter_may_hold_the_subject(
    dsn: str, conn: psycopg.Connection, tmp_path: Path
) -> None:
    from callvault.config import Settings
    from tests.test_archive import expected_archive

    run("init", "--dsn", dsn)
    seed(conn)
    run("privacy", "subject", "--dsn", dsn, "--metadata-key", "caller")  # before archiving: filters are written
    weeks = sorted(expected_archive(conn, Settings(dsn=dsn)))
    assert len(weeks) >= 3
    rare = "+19990000001"  # one call, in one archived week
    conn.execute(
        f"UPDATE {weeks[1]} SET metadata = metadata || jsonb_build_object('caller', %s::text) "
        f"WHERE id = (SELECT min(id) FROM {weeks[1]} WHERE tenant_id = %s)",
        (rare, TENANT),
    )
    conn.commit()
    store = new_dir(tmp_path / "store")
    run("archive", "--dsn", dsn, "--to", store.as_uri(), "--at", AT)
    filters = sorted(store.rglob("*.bloom"))
    assert len(filters) == sum(1 for _ in weeks for _ in TENANTS) and all("_subject_index" in str(f) for f in filters)
    assert not any(rare.encode() in f.read_bytes() for f in filters), "a filter holds no subject"

    receipt = run_json("erase", "--dsn", dsn, "--to", store.as_uri(), "--tenant-id", TENANT, "--subject", rare)
    removed = receipt["removed"]
    assert removed["archive_rows"] == 1 and removed["archive_objects_rewritten"] == 1
    assert removed["archive_objects_read"] == 1, "only the week whose filter may hold the subject was read"
    assert removed["archive_periods_skipped"] == len(weeks) - 1
    assert (TENANT, rare) not in archive_rows(store)


def test_erase_reaches_every_store_the_archive_went_to(dsn: str, conn: psycopg.Connection, tmp_path: Path) -> None:
    run("init", "--dsn", dsn)
    seed(conn)
    first, second = new_dir(tmp_path / "first"), new_dir(tmp_path / "second")
    earlier = (datetime.fromisoformat(AT) - timedelta(weeks=1)).isoformat()
    run("archive", "--dsn", dsn, "--to", first.as_uri(), "--at", earlier)
    run("archive", "--dsn", dsn, "--to", second.as_uri(), "--at", AT, "--new-store")
    assert (TENANT, SUBJECT) in archive_rows(first) and (TENANT, SUBJECT) in archive_rows(second)
    run("privacy", "subject", "--dsn", dsn, "--metadata-key", "caller")
    receipt = run_json("erase", "--dsn", dsn, "--to", second.as_uri(), "--tenant-id", TENANT, "--subject", SUBJECT)
    assert receipt["done"]
    assert (TENANT, SUBJECT) not in archive_rows(first) and (TENANT, SUBJECT) not in archive_rows(second)
    assert not marker_in_files(first) and not marker_in_files(second)
