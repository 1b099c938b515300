"""Logging: per-capability loggers (callvault.archive, .maintain, .restore, .prune), their levels, no
call content in any record, and the CLI's -v/-q (plain text on stderr; JSON lines under the worker)."""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from callvault import logs
from callvault.archive import pipeline
from callvault.archive.prune import prune, set_policy
from callvault.archive.restore import restore
from callvault.config import Settings
from callvault.maintain import maintain
from tests.helpers import new_dir, run
from tests.test_archive import AT, TENANTS, fill

CLI = str(Path(sys.executable).parent / "callvault")
STEPS = ["pending", "detached", "exported", "uploaded", "verified", "dropped"]
# what tests/test_archive.py's fill() writes into transcripts and metadata: none of it may be logged
CONTENT = ("transcript ", '"quoted"', '\\"quoted\\"', "\nline", "\\nline", '"tags"', "tags=")


@pytest.fixture
def filled(dsn: str, conn: psycopg.Connection) -> Settings:
    run("init", "--dsn", dsn)
    fill(conn)
    return Settings(dsn=dsn)


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every callvault record, DEBUG included."""
    with caplog.at_level(logging.DEBUG, logger="callvault"):
        yield caplog


def on(caplog: pytest.LogCaptureFixture, logger: str, level: int | None = None) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger and (level is None or r.levelno == level)]


def fields(r: logging.LogRecord) -> dict[str, object]:
    got = getattr(r, "fields", {})
    assert isinstance(got, dict)
    return got


def assert_no_content(caplog: pytest.LogCaptureFixture) -> None:
    text, lines = logging.Formatter(logs.TEXT_FORMAT), logs.JsonLineFormatter()
    assert caplog.records
    for r in caplog.records:
        for rendered in (text.format(r), lines.format(r)):
            leaked = [c for c in CONTENT if c in rendered]
            assert not leaked, f"call content {leaked} in a log record: {rendered}"


def at() -> datetime:
    return datetime.fromisoformat(AT)


# ---------------------------------------------------------------- the library's records


def test_library_never_prints_unless_configured() -> None:
    root = logging.getLogger("callvault")
    assert any(isinstance(h, logging.NullHandler) for h in root.handlers)
    assert logs.get_logger("archive") is logging.getLogger("callvault.archive")
    assert (
        logs.kv(a=1, b=[1, "x"], c="two words", d=None, e=0.12345, f=True)
        == 'a=1 b=[1,x] c="two words" d=- e=0.123 f=true'
    )


def test_archive_logs_every_step_of_every_partition(filled: Settings, records: pytest.LogCaptureFixture,
                                                     tmp_path: Path) -> None:  # fmt: skip
    store = new_dir(tmp_path / "store").as_uri()
    report = pipeline.archive(filled, store_url=store, at=at(), spool=tmp_path / "spool")
    names = [p.partition for p in report.partitions]
    assert len(names) >= 2 and all(p.step_after == "dropped" for p in report.partitions)

    steps = [
        fields(r) for r in on(records, "callvault.archive", logging.INFO) if r.getMessage().startswith("archive step ")
    ]
    for name in names:
        mine = [f for f in steps if f["partition"] == name]
        assert [(f["from"], f["to"]) for f in mine] == list(itertools.pairwise(STEPS)), name
        assert all(isinstance(f["seconds"], float) for f in mine)
        export = next(f for f in mine if f["to"] == "exported")
        assert isinstance(export["rows"], int) and export["rows"] > 0 and isinstance(export["bytes"], int)
        assert export["bytes"] > 0
        assert next(f for f in mine if f["to"] == "uploaded")["bytes"] == export["bytes"]
    first = next(
        r for r in on(records, "callvault.archive", logging.INFO) if r.getMessage().startswith("archive step ")
    )
    assert first.getMessage().startswith(f"archive step partition={names[0]} from=pending to=detached seconds=")
    done = [r for r in on(records, "callvault.archive", logging.INFO) if r.getMessage().startswith("archive run done")]
    assert len(done) == 1 and fields(done[0])["archived"] == len(names) and fields(done[0])["failed"] == 0
    assert on(records, "callvault.archive", logging.DEBUG), "candidates and step starts at DEBUG"
    assert not on(records, "callvault.archive", logging.WARNING)
    assert_no_content(records)


def test_restore_rearchive_and_prune_log_on_their_loggers(
    filled: Settings, records: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    store, spool = new_dir(tmp_path / "store").as_uri(), tmp_path / "spool"
    report = pipeline.archive(filled, store_url=store, at=at(), spool=spool)
    oldest = min(report.partitions, key=lambda p: p.start)

    rep = restore(filled, oldest.start.date(), store_url=store)
    assert rep.attached
    restored = [
        fields(r) for r in on(records, "callvault.restore", logging.INFO) if r.getMessage().startswith("restored ")
    ]
    assert restored == [fields(r) for r in on(records, "callvault.restore") if r.getMessage().startswith("restored ")]
    assert len(restored) == 1 and restored[0]["partition"] == oldest.partition
    assert restored[0]["rows"] == sum(rep.tenants.values()) and restored[0]["tenants"] == len(TENANTS)
    verified = [fields(r) for r in on(records, "callvault.restore", logging.DEBUG) if "verified" in r.getMessage()]
    assert {f["tenant"] for f in verified} == set(TENANTS)  # tenant ids and counts are fine to log

    records.clear()
    again = pipeline.archive(filled, store_url=store, at=at(), spool=spool)
    assert [p.partition for p in again.partitions] == [oldest.partition]
    merged = [
        fields(r) for r in on(records, "callvault.archive", logging.INFO) if r.getMessage().startswith("re-archive")
    ]
    assert merged == [{"partition": oldest.partition, "merged_tenants": len(TENANTS), "kept_tenants": 0,
                       "format": "parquet"}]  # fmt: skip

    records.clear()
    set_policy(filled, "30 days")
    later = datetime.now(UTC) + timedelta(days=200)
    pr = prune(filled, store_url=store, at=later)
    pruned = [fields(r) for r in on(records, "callvault.prune", logging.INFO) if r.getMessage().startswith("pruned ")]
    assert len(pruned) == len(pr.deleted) > 0 and {f["tenant"] for f in pruned} == set(TENANTS)
    summary = [
        fields(r) for r in on(records, "callvault.prune", logging.INFO) if r.getMessage().startswith("prune done")
    ]
    assert summary[0]["tenant_periods"] == len(pr.deleted)
    assert_no_content(records)


def test_verify_failure_is_a_warning_and_the_partition_is_kept(
    filled: Settings, records: pytest.LogCaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = new_dir(tmp_path / "store")
    upload = pipeline.step_upload
    damaged: list[str] = []

    def upload_then_truncate(ctx: pipeline._Ctx, job: pipeline.Job) -> int:
        sent = upload(ctx, job)
        if not damaged:  # the first partition's first object, cut in half after its checksum was recorded
            victim = sorted(root.rglob("*.parquet"))[0]
            victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
            damaged.append(job.partition)
        return sent

    monkeypatch.setattr(pipeline, "step_upload", upload_then_truncate)
    report = pipeline.archive(filled, store_url=root.as_uri(), at=at(), spool=tmp_path / "spool")
    failed = [p for p in report.partitions if p.error]
    assert [p.partition for p in failed] == damaged
    warned = [r for r in on(records, "callvault.archive", logging.WARNING) if "verify failed" in r.getMessage()]
    assert len(warned) == 1 and fields(warned[0])["partition"] == damaged[0] and fields(warned[0])["exit_code"] == 65
    assert not on(records, "callvault.archive", logging.ERROR)
    assert_no_content(records)


def test_maintain_logs_its_result(dsn: str, records: pytest.LogCaptureFixture) -> None:
    run("init", "--dsn", dsn)
    report = maintain(Settings(dsn=dsn), at=datetime.now(UTC) + timedelta(weeks=2))
    assert report.created
    done = [r for r in on(records, "callvault.maintain", logging.INFO) if r.getMessage().startswith("maintenance done")]
    assert len(done) == 1
    f = fields(done[0])
    assert f["created"] == report.created and f["detached"] == report.detached and f["dropped"] == []
    assert f["finalized"] == [] and f["secured"] == len(report.secured)
    assert f["attempts"] == 1 and f["blocked"] is False
    assert f"created=[{','.join(report.created)}]" in done[0].getMessage()
    assert not on(records, "callvault.maintain", logging.WARNING)


def _hold_until_waited_on(dsn: str, after_s: float = 0.4) -> tuple[psycopg.Connection, threading.Thread]:
    """Hold ACCESS EXCLUSIVE on call_logs (and so its partitions) until another session has queued
    behind it for ``after_s``: longer than the callers' lock budget, so at least one lock timeout, then
    success. Without a waiter within 60 s it lets go anyway (the test then fails on its asserts)."""
    holder = psycopg.connect(dsn)
    holder.execute("LOCK TABLE call_logs IN ACCESS EXCLUSIVE MODE")
    pid = holder.info.backend_pid

    def release() -> None:
        with psycopg.connect(dsn, autocommit=True) as watch:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                row = watch.execute(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted AND pid <> %s "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                    (pid,),
                ).fetchone()
                if row and row[0]:
                    break
                time.sleep(0.02)
        time.sleep(after_s)
        holder.rollback()

    t = threading.Thread(target=release)
    t.start()
    return holder, t


def test_lock_retry_is_a_warning(realtime_dsn: str, records: pytest.LogCaptureFixture) -> None:
    dsn = realtime_dsn  # lock_timeout must fire: a server on the real clock
    run("init", "--dsn", dsn)
    holder, t = _hold_until_waited_on(dsn)
    try:
        report = maintain(Settings(dsn=dsn, lock_timeout_ms=100), at=datetime.now(UTC) + timedelta(weeks=2))
    finally:
        t.join()
        holder.close()
    assert report.attempts > 1 and report.created
    retries = [fields(r) for r in on(records, "callvault.maintain", logging.WARNING) if "retrying" in r.getMessage()]
    assert [f["attempt"] for f in retries] == list(range(1, report.attempts))
    assert retries[0]["wait_s"] == 0.2 and retries[0]["of"] == 5 and "maintenance on" in str(retries[0]["what"])
    done = [
        fields(r) for r in on(records, "callvault.maintain", logging.INFO) if r.getMessage().startswith("maintenance")
    ]
    assert done[-1]["attempts"] == report.attempts


# ---------------------------------------------------------------- the CLI


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False)


def test_cli_verbosity_flags(dsn: str) -> None:
    run("init", "--dsn", dsn)
    quiet_default = cli("status", "--dsn", dsn)
    assert quiet_default.returncode == 0 and quiet_default.stderr == ""  # default: errors only

    verbose = cli("-v", "status", "--dsn", dsn)
    assert verbose.returncode == 0 and verbose.stdout
    lines = verbose.stderr.splitlines()
    assert lines and lines[-1].startswith("INFO callvault.cli: command finished command=status exit=0 seconds=")
    assert not any(line.startswith("DEBUG ") for line in lines)

    maint = cli("-v", "maintain", "--dsn", dsn, "--at", (datetime.now(UTC) + timedelta(weeks=2)).isoformat())
    assert maint.returncode == 0, maint.stderr
    done = [line for line in maint.stderr.splitlines() if line.startswith("INFO callvault.maintain: maintenance done")]
    assert len(done) == 1 and " table=public.call_logs at=" in done[0] and " created=[call_logs_p" in done[0]

    debug = cli("-vv", "maintain", "--dsn", dsn)
    assert any(line.startswith("DEBUG callvault.maintain: maintenance lock held") for line in debug.stderr.splitlines())

    failing = cli("-q", "status", "--dsn", dsn, "--table", "nope")
    assert failing.returncode == 66 and failing.stderr.startswith("error:")  # errors are still printed

    both = cli("-v", "-q", "status", "--dsn", dsn)
    assert both.returncode == 2 and "cannot be used together" in both.stderr


def test_cli_warnings_with_v_and_none_by_default(realtime_dsn: str) -> None:
    dsn = realtime_dsn  # lock_timeout must fire: a server on the real clock
    run("init", "--dsn", dsn)
    env = {"CALLVAULT_LOCK_TIMEOUT_MS": "100"}
    for weeks, flags in ((2, ("-v",)), (4, ())):
        holder, t = _hold_until_waited_on(dsn)
        try:
            at_ = (datetime.now(UTC) + timedelta(weeks=weeks)).isoformat()
            done = cli(*flags, "maintain", "--dsn", dsn, "--at", at_, "--json", env=env)
        finally:
            t.join()
            holder.close()
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["attempts"] > 1
        if not flags:
            assert done.stderr == "", "by default an operator sees only the result, or one error line"
        else:
            assert "WARNING callvault.maintain: lock timeout, retrying" in done.stderr
            assert "attempt=1 of=5 wait_s=0.200" in done.stderr


def test_worker_logs_json_lines_only(filled: Settings, conn: psycopg.Connection, tmp_path: Path) -> None:
    conn.execute("UPDATE partman.part_config SET retention = '8 weeks' WHERE parent_table = 'public.call_logs'")
    env = {
        "CALLVAULT_ARCHIVE_URL": new_dir(tmp_path / "store").as_uri(),
        "CALLVAULT_ARCHIVE_SPOOL": str(tmp_path / "spool"),
    }
    done = cli("-v", "worker", "--dsn", filled.dsn or "", "--once", env=env)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stderr.splitlines()]  # every line is JSON
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and "cycle" in kinds and "stop" in kinds
    steps = [e for e in events if e["event"] == "log" and e["logger"] == "callvault.archive" and "to" in e]
    assert steps and all(e["level"] == "INFO" and e["message"].startswith("archive step ") for e in steps)
    assert any(e["to"] == "dropped" for e in steps)
    assert any(e["event"] == "log" and e["logger"] == "callvault.maintain" for e in events)
    assert not any(c in done.stderr for c in CONTENT)
