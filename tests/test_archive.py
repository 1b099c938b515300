"""callvault archive / restore / archive query / prune against real Postgres and a real S3 HTTP server.

Fourteen weeks of calls for several tenants; the clock moves past retention with ``--at``; the archive
goes to a bucket on a local S3 server (moto's server mode, spoken to over HTTP by boto3 and pyarrow).
Crashes are real: the CLI runs in a subprocess that SIGKILLs itself after each step in turn.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import boto3
import psycopg
import pytest

from callvault.archive.faults import FAULT_ENV, FAULT_POINTS
from callvault.archive.location import SPOOL_ENV
from callvault.archive.reader import read_calls
from callvault.config import Settings
from callvault.locks import LOCK_NAMESPACE
from tests.helpers import fingerprints_match, new_dir, pg_fingerprints, run, run_json

CLI = str(Path(sys.executable).parent / "callvault")
TENANTS = [f"00000000-0000-4000-8000-{i:012d}" for i in range(1, 6)]
AT = (datetime.now(UTC) + timedelta(weeks=3)).isoformat()  # the clock, moved past retention


# Lower bounds of the attached partitions, from the catalog: test data is derived from what `init`
# made, never from "N weeks back from today" (on Sundays that week starts before the oldest partition).
PARTITION_STARTS = """SELECT (regexp_match(pg_get_expr(c.relpartbound, c.oid),
                                           'FROM \\(''([^'']+)''\\)'))[1]::timestamptz
                      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                      WHERE i.inhparent = 'public.call_logs'::regclass"""


def fill(conn: psycopg.Connection, per_tenant_week: int = 40) -> None:
    """Rows in every partition that has begun (the retention window and the current week) for every
    tenant (tenant i gets i * per_tenant_week a week), up to the server's now."""
    conn.execute(
        """INSERT INTO call_logs (tenant_id, call_id, started_at, ended_at, duration_sec, transcript, metadata)
           SELECT t.id::uuid, gen_random_uuid(), ts, ts + interval '42 s', CASE WHEN g %% 7 = 0 THEN NULL ELSE 42 END,
                  CASE WHEN g %% 11 = 0 THEN NULL WHEN g %% 13 = 0 THEN ''
                       ELSE 'transcript ' || g || E' "quoted",\nline' END,
                  jsonb_build_object('g', g, 'tags', jsonb_build_array('a', 'b'))
           FROM unnest(%s::text[]) WITH ORDINALITY AS t(id, n),
                ("""
        + PARTITION_STARTS
        + """) AS p(lo),
                generate_series(1, %s * t.n::int) AS g,
                LATERAL (SELECT p.lo + g * interval '1 minute' AS ts) x
           WHERE ts < now()""",
        (TENANTS, per_tenant_week),
    )
    conn.execute("SELECT pg_stat_force_next_flush()")  # the live-row counts archive's progress estimates from


def counts(conn: psycopg.Connection, start: datetime, end: datetime) -> dict[str, int]:
    rows = conn.execute(
        "SELECT tenant_id::text, count(*) FROM call_logs WHERE started_at >= %s AND started_at < %s GROUP BY 1",
        (start, end),
    ).fetchall()
    return dict(rows)


def expected_archive(
    conn: psycopg.Connection, settings: Settings, at: str = AT
) -> dict[str, dict[str, dict[str, tuple]]]:
    """For each partition the archive will take at ``at``: per-tenant fingerprints computed by Postgres now."""
    plan = run_json("plan", "--dsn", settings.dsn or "", "--at", at)
    return {p["name"]: pg_fingerprints(conn, p["name"]) for p in plan["retire"]}


def cli(*args: str, env: dict[str, str] | None = None, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, **kw)  # type: ignore[call-overload]


def bucket_objects(url: str) -> dict[str, int]:
    bucket, prefix = url[len("s3://") :].split("/", 1)
    s3 = boto3.client("s3")
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for o in page.get("Contents", []):
            out[o["Key"][len(prefix) + 1 :]] = o["Size"]
    return out


def manifests(url: str) -> dict[str, dict]:
    bucket, prefix = url[len("s3://") :].split("/", 1)
    s3 = boto3.client("s3")
    out = {}
    for key in bucket_objects(url):
        if "/_manifests/" in key:
            doc = json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}/{key}")["Body"].read())
            out[doc["partition"]] = doc
    return out


def exists(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{name}",)).fetchone()[0]


def assert_archived(conn: psycopg.Connection, url: str, expected: dict) -> None:
    got = manifests(url)
    assert set(got) == set(expected), "one manifest per archived partition"
    keys = set(bucket_objects(url))
    listed = {f"call_logs/_manifests/week={m['range']['from'][:10]}.json" for m in got.values()}
    for name, tenants in expected.items():
        assert not exists(conn, name), f"{name} should be dropped after a verified archive"
        doc = got[name]
        assert fingerprints_match(doc["tenants"], tenants)
        for entry in doc["tenants"].values():
            listed |= {o["key"] for o in entry["objects"]}
    assert keys == listed, f"objects not in any manifest (duplicates?): {keys - listed}"
    journal = conn.execute("SELECT partition, step FROM callvault.archive_journal").fetchall()
    assert {p: s for p, s in journal} == dict.fromkeys(expected, "dropped")


@pytest.fixture
def filled(dsn: str, conn: psycopg.Connection) -> Settings:
    run("init", "--dsn", dsn)
    fill(conn)
    return Settings(dsn=dsn)


def test_archive_to_s3_then_query_and_restore(filled: Settings, conn: psycopg.Connection, bucket: str) -> None:
    dsn = filled.dsn or ""
    expected = expected_archive(conn, filled)
    assert len(expected) >= 2 and all(len(t) == len(TENANTS) for t in expected.values())
    dry = run_json("archive", "--dsn", dsn, "--to", bucket, "--at", AT, "--dry-run")
    assert {p["partition"] for p in dry["partitions"]} == set(expected)
    assert all(exists(conn, n) for n in expected), "dry run changes nothing"

    report = run_json("archive", "--dsn", dsn, "--to", bucket, "--at", AT)
    assert {p["partition"] for p in report["partitions"]} == set(expected)
    assert all(p["step_after"] == "dropped" and p["error"] is None for p in report["partitions"])
    assert_archived(conn, bucket, expected)
    again = run_json("archive", "--dsn", dsn, "--to", bucket, "--at", AT)
    assert again["partitions"] == []  # nothing left; nothing re-uploaded

    oldest = min(expected)
    doc = manifests(bucket)[oldest]
    week = doc["range"]["from"][:10]
    rows = sum(int(e["rows"]) for e in doc["tenants"].values())
    q = f"SELECT count(*) AS n FROM call_logs WHERE week = DATE '{week}'"
    assert run_json("archive", "query", "--dsn", dsn, "--to", bucket, q) == [{"n": rows}]
    per_tenant = run_json(
        "archive", "query", "--dsn", dsn, "--to", bucket,
        "SELECT tenant_id::VARCHAR AS t, count(*) AS n FROM call_logs GROUP BY 1 ORDER BY 1",
    )  # fmt: skip
    assert {r["t"]: r["n"] for r in per_tenant} == {
        t: sum(int(m["tenants"][t]["rows"]) for m in manifests(bucket).values()) for t in TENANTS
    }

    start = datetime.fromisoformat(doc["range"]["from"])
    end = datetime.fromisoformat(doc["range"]["to"])
    table = read_calls(TENANTS[2], since=start, until=end, settings=filled, store_url=bucket)
    assert table.num_rows == int(doc["tenants"][TENANTS[2]]["rows"])

    side = run_json("restore", "--dsn", dsn, "--to", bucket, "--week", week, "--tenant", TENANTS[0], "--into", "inv")
    assert side["tenants"] == {TENANTS[0]: int(doc["tenants"][TENANTS[0]]["rows"])}
    hot = run_json("restore", "--dsn", dsn, "--to", bucket, "--week", week)
    assert hot["attached_partition"] and hot["rows"] == rows
    assert counts(conn, start, end) == {t: int(e["rows"]) for t, e in doc["tenants"].items()}
    assert pg_fingerprints(conn, oldest) == expected[oldest]
    # Restoring over an attached week adds nothing and still verifies.
    assert run_json("restore", "--dsn", dsn, "--to", bucket, "--week", week)["rows"] == rows


@pytest.mark.parametrize("point", FAULT_POINTS)
def test_killed_after_each_step_resumes_to_the_same_state(
    filled: Settings, conn: psycopg.Connection, bucket: str, point: str
) -> None:
    dsn = filled.dsn or ""
    expected = expected_archive(conn, filled)
    killed = cli("archive", "--dsn", dsn, "--to", bucket, "--at", AT, env={FAULT_ENV: point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if point != "drop":  # nothing is dropped before the archive is verified
        first = min(expected)
        assert exists(conn, first), f"{first} dropped before its archive was verified"
    resumed = cli("archive", "--dsn", dsn, "--to", bucket, "--at", AT, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert_archived(conn, bucket, expected)
    spool = Path(os.environ[SPOOL_ENV])  # this run's own (tests/conftest.py)
    leftovers = [p.name for p in spool.glob("*-*-*") if p.name.split("-")[0] in ("verify", "merge")]
    assert leftovers == [], f"the killed run's work directories were not removed: {leftovers}"


def test_store_unreachable_detaches_nothing(filled: Settings, conn: psycopg.Connection, bucket: str) -> None:
    dsn = filled.dsn or ""
    expected = expected_archive(conn, filled)
    down = cli("archive", "--dsn", dsn, "--to", bucket, "--at", AT, env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert down.returncode == 69 and "S3" in down.stderr and "nothing was dropped" in down.stderr
    missing = cli("archive", "--dsn", dsn, "--to", "s3://no-such-bucket/x", "--at", AT)
    assert missing.returncode == 69 and "no-such-bucket" in missing.stderr
    attached = {r[0] for r in conn.execute("SELECT inhrelid::regclass::text FROM pg_inherits").fetchall()}
    assert set(expected) <= attached, "no partition is detached while the store is unreachable"


def test_corrupted_object_is_caught_and_nothing_dropped(
    filled: Settings, conn: psycopg.Connection, bucket: str
) -> None:
    dsn = filled.dsn or ""
    expected = expected_archive(conn, filled)
    killed = cli("archive", "--dsn", dsn, "--to", bucket, "--at", AT, env={FAULT_ENV: "upload"})
    assert killed.returncode == -signal.SIGKILL
    bucket_name, prefix = bucket[len("s3://") :].split("/", 1)
    key = next(k for k in bucket_objects(bucket) if k.endswith(".parquet") and f"tenant_id={TENANTS[1]}" in k)
    body = boto3.client("s3").get_object(Bucket=bucket_name, Key=f"{prefix}/{key}")["Body"].read()
    # Truncated, but uploaded with the original checksum metadata: only reading it back catches it.
    meta = boto3.client("s3").head_object(Bucket=bucket_name, Key=f"{prefix}/{key}")["Metadata"]
    boto3.client("s3").put_object(Bucket=bucket_name, Key=f"{prefix}/{key}", Body=body[: len(body) // 2], Metadata=meta)
    bad = cli("archive", "--dsn", dsn, "--to", bucket, "--at", AT)
    assert bad.returncode == 65, bad.stderr
    assert "truncated" in bad.stderr or "does not match" in bad.stderr
    assert exists(conn, min(expected)), "a partition whose archive failed verification is kept"
    health = cli("health", "--dsn", dsn)
    assert health.returncode == 3 and "archive of" in health.stderr
    healed = cli("archive", "--dsn", dsn, "--to", bucket, "--at", AT)  # re-exports, re-uploads, verifies
    assert healed.returncode == 0, healed.stderr
    assert_archived(conn, bucket, expected)


def test_disk_full_on_the_spool_keeps_the_partition(filled: Settings, conn: psycopg.Connection, tmp_path: Path) -> None:
    dsn = filled.dsn or ""
    store = new_dir(tmp_path / "store").as_uri()
    expected = expected_archive(conn, filled)

    def tiny_disk() -> None:  # every file the archiver writes is capped at 4 KB: "disk full"
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    env = {**os.environ, "CALLVAULT_ARCHIVE_SPOOL": str(tmp_path / "spool")}
    full = subprocess.run([CLI, "archive", "--dsn", dsn, "--to", store, "--at", AT], capture_output=True, text=True,
                          env=env, preexec_fn=tiny_disk)  # fmt: skip
    assert full.returncode == 69, full.stderr
    assert "spool" in full.stderr and "CALLVAULT_ARCHIVE_SPOOL" in full.stderr
    assert all(exists(conn, n) for n in expected), "nothing dropped when the export could not be written"
    ok = subprocess.run([CLI, "archive", "--dsn", dsn, "--to", store, "--at", AT], capture_output=True, text=True,
                        env=env)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert not any(exists(conn, n) for n in expected)


def test_second_archiver_exits_already_running(filled: Settings, conn: psycopg.Connection, tmp_path: Path) -> None:
    key = conn.execute("SELECT hashtext('public.call_logs#archive')").fetchone()[0]
    with psycopg.connect(filled.dsn or "", autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_NAMESPACE, key))
        busy = cli("archive", "--dsn", filled.dsn or "", "--to", tmp_path.as_uri(), "--at", AT)
    assert busy.returncode == 75 and "already in progress" in busy.stderr


@pytest.mark.single_node(
    "DETACH ... CONCURRENTLY: Citus refuses it on distributed tables; the archive detaches plainly there"
)
def test_interrupted_concurrent_detach_is_finalized(filled: Settings, conn: psycopg.Connection, tmp_path: Path) -> None:
    dsn = filled.dsn or ""
    expected = expected_archive(conn, filled)
    name = min(expected)
    with psycopg.connect(dsn) as reader, psycopg.connect(dsn, autocommit=True) as ddl:
        reader.execute("SELECT count(*) FROM call_logs")  # an open transaction the detach must wait for
        # cancelled from the client after 1 s, not by statement_timeout: server timeouts do not fire
        # under a libfaketime clock set ahead (tests/clock.py), and the suite runs under one too
        # (a sleeping thread, not threading.Timer: a timed condition wait never wakes under faketime)
        interrupt = threading.Thread(target=lambda: (time.sleep(1.0), ddl.cancel()))
        interrupt.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            ddl.execute(f"ALTER TABLE call_logs DETACH PARTITION {name} CONCURRENTLY")
        interrupt.join()
        reader.rollback()
    pending = conn.execute(
        "SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = %s::regclass", (f"public.{name}",)
    ).fetchone()
    assert pending == (True,)
    run("archive", "--dsn", dsn, "--to", tmp_path.as_uri(), "--at", AT)
    assert not any(exists(conn, n) for n in expected)


def test_empty_partition_and_csv_format(dsn: str, conn: psycopg.Connection, tmp_path: Path) -> None:
    run("init", "--dsn", dsn)
    fill(conn, per_tenant_week=3)
    expected = expected_archive(conn, Settings(dsn=dsn))
    emptied = min(expected)
    conn.execute(f"DELETE FROM {emptied}")
    store = tmp_path.as_uri()
    report = run_json("archive", "--dsn", dsn, "--to", store, "--at", AT, "--format", "csv")
    assert all(p["step_after"] == "dropped" for p in report["partitions"])
    docs = {json.loads(p.read_text())["partition"]: json.loads(p.read_text()) for p in tmp_path.rglob("*.json")}
    assert docs[emptied]["tenants"] == {} and docs[emptied]["rows"] == 0
    other = sorted(expected)[1]
    assert docs[other]["format"] == "csv" and docs[other]["rows"] == sum(e["md5"][0] for e in expected[other].values())
    csv_file = next(tmp_path.rglob("*.csv"))
    assert csv_file.read_text().startswith("id,tenant_id,call_id,started_at")
    week = docs[other]["range"]["from"][:10]
    restored = run_json("restore", "--dsn", dsn, "--to", store, "--week", week, "--into", "from_csv")
    assert restored["rows"] == docs[other]["rows"]


def test_prune_honours_per_tenant_policy(filled: Settings, conn: psycopg.Connection, bucket: str) -> None:
    dsn = filled.dsn or ""
    run("archive", "--dsn", dsn, "--to", bucket, "--at", AT)
    run("archive", "policy", "--dsn", dsn, "--keep", "30 days")
    hipaa = TENANTS[0]
    policy = run_json("archive", "policy", "--dsn", dsn, "--tenant", hipaa, "--keep", "7 years")
    assert policy == {"default": "30 days", "tenants": {hipaa: "7 years"}}
    later = (datetime.now(UTC) + timedelta(days=200)).isoformat()
    dry = run_json("archive", "prune", "--dsn", dsn, "--to", bucket, "--at", later, "--dry-run")
    assert dry["deleted"] and {d["tenant"] for d in dry["deleted"]} == set(TENANTS[1:])
    before = set(bucket_objects(bucket))
    done = run_json("archive", "prune", "--dsn", dsn, "--to", bucket, "--at", later)
    assert done["deleted"] == dry["deleted"]
    left = set(bucket_objects(bucket))
    assert {k for k in before - left} and all(f"tenant_id={hipaa}" not in k for k in before - left)
    assert not any(f"tenant_id={t}" in k for k in left for t in TENANTS[1:])
    for doc in manifests(bucket).values():
        assert "pruned_at" not in doc["tenants"][hipaa]
        assert all("pruned_at" in doc["tenants"][t] for t in TENANTS[1:])
    assert run_json("archive", "prune", "--dsn", dsn, "--to", bucket, "--at", later)["deleted"] == []


def test_worker_runs_cycles_and_stops_on_sigterm(filled: Settings, conn: psycopg.Connection, tmp_path: Path) -> None:
    dsn = filled.dsn or ""
    # Retention short enough that, today, the oldest weeks are past it without moving the clock.
    conn.execute("UPDATE partman.part_config SET retention = '8 weeks' WHERE parent_table = 'public.call_logs'")
    env = {**os.environ, "CALLVAULT_ARCHIVE_URL": tmp_path.as_uri()}
    proc = subprocess.Popen([CLI, "worker", "--dsn", dsn, "--every", "1s"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            row = conn.execute("SELECT cycle_ok FROM callvault.worker_status").fetchone() if exists_meta(conn) else None
            if row and row[0]:
                break
            time.sleep(0.2)
        second = cli("worker", "--dsn", dsn, "--every", "1s", env={"CALLVAULT_ARCHIVE_URL": tmp_path.as_uri()})
        assert second.returncode == 75 and "already running" in second.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    events = [
        json.loads(line) for line in (proc.stderr.read() if proc.stderr else "").splitlines() if line.startswith("{")
    ]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and "cycle" in kinds and "signal" in kinds and kinds[-1] == "stop"
    assert any(e["event"] == "archive" and e["step_after"] == "dropped" for e in events)
    done = [e for e in events if e["event"] == "progress" and e["done"]]
    assert {e["step"] for e in done} == {"export", "upload", "verify"}, "progress as JSON lines"
    assert all({"rows", "bytes", "rows_per_s", "eta_s", "partition"} <= set(e) for e in done)
    st = run_json("status", "--dsn", dsn)
    assert st["worker"]["cycle_ok"] is not None and st["archive_in_progress"] == []
    assert cli("health", "--dsn", dsn).returncode == 0


def exists_meta(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT to_regclass('callvault.worker_status') IS NOT NULL").fetchone()[0]


def test_bad_input_is_named(dsn: str, tmp_path: Path) -> None:
    run("init", "--dsn", dsn)
    bad_url = run("archive", "--dsn", dsn, "--to", "ftp://x/y", ok=False)
    assert bad_url.exit_code == 2 and "ftp://x/y" in bad_url.stderr
    no_week = run("restore", "--dsn", dsn, "--to", tmp_path.as_uri(), "--week", "2020-01-06", ok=False)
    assert no_week.exit_code == 1 and "archive list" in no_week.stderr
    bad_date = run("restore", "--dsn", dsn, "--to", tmp_path.as_uri(), "--week", "last tuesday", ok=False)
    assert bad_date.exit_code == 2 and "YYYY-MM-DD" in bad_date.stderr
    bad_keep = run("archive", "policy", "--dsn", dsn, "--keep", "forever-ish", ok=False)
    assert bad_keep.exit_code == 2
    bad_sql = run("archive", "query", "--dsn", dsn, "--to", tmp_path.as_uri(), "SELEC 1", ok=False)
    assert bad_sql.exit_code == 2 and "archive query failed" in bad_sql.stderr
    assert date.today()  # keep the import honest for the week maths above
