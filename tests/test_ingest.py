"""The batching writer through its public API, against the real database."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

import callvault
from callvault.config import Settings
from callvault.embedded import Cluster
from callvault.errors import NotInitialised, WriterError
from callvault.ingest import AsyncWriter, Call, Writer, default
from tests.helpers import make_calls, run, run_json


@pytest.fixture
def ready(dsn: str) -> str:
    run("init", "--dsn", dsn)
    return dsn


def count(dsn: str, where: str = "true") -> int:
    with psycopg.connect(dsn) as c:
        return int(c.execute(f"SELECT count(*) FROM call_logs WHERE {where}").fetchone()[0])


def quarantined(dsn: str) -> list[tuple[str, str]]:
    with psycopg.connect(dsn) as c:
        return c.execute("SELECT reason, raw FROM callvault.quarantine ORDER BY id").fetchall()


def test_mixed_batch_good_rows_land_once_bad_rows_quarantined(ready: str) -> None:
    good = make_calls(50)
    with Writer(ready) as w:
        w.write_many(good[:20])
        first = w.flush()
        assert (first.written, first.duplicates, first.quarantined) == (20, 0, 0)
        bad = [
            dict(good[0], transcript="nul \x00 byte"),
            dict(good[1], started_at=datetime(2026, 1, 1, 12, 0)),  # naive
            dict(good[2], tenant_id="acme-corp"),
            dict(good[3], call_id=uuid.uuid4(), started_at=datetime.now(UTC) + timedelta(weeks=30), ended_at=None),
        ]
        w.write_many([*good[:20], *bad, *good[20:]])  # 20 duplicates of earlier rows, 4 bad, 30 new
        second = w.flush()
    assert (second.written, second.duplicates, second.quarantined) == (30, 20, 4)
    assert count(ready) == 50
    assert count(ready, "transcript LIKE 'nul%'") == 0
    reasons = [r for r, _ in quarantined(ready)]
    assert len(reasons) == 4
    assert any("NUL" in r for r in reasons)
    assert any("naive" in r or "time zone" in r or "timezone" in r for r in reasons)
    assert any("acme-corp" in r for r in reasons)
    assert any("premake horizon" in r for r in reasons)


def test_log_call_convenience_batches_and_flushes(ready: str) -> None:
    default.configure(ready, flush_interval=0.05)
    try:
        for call in make_calls(25):
            callvault.log_call(**call)
        callvault.log_call(Call(tenant_id=str(uuid.uuid4()), call_id=str(uuid.uuid4()),
                                started_at=datetime.now(UTC).isoformat()))  # fmt: skip
        result = default.flush()
        assert result.written == 26
    finally:
        default.close()
    assert count(ready) == 26


def test_flush_on_age_without_explicit_flush(ready: str) -> None:
    with Writer(ready, flush_interval=0.1) as w:
        w.write(make_calls(1)[0])
        deadline = time.monotonic() + 5
        while count(ready) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert count(ready) == 1
        assert w.stats.written == 1


def test_batches_split_on_size(ready: str) -> None:
    with Writer(ready, batch_rows=100) as w:
        w.write_many(make_calls(1050))
        result = w.flush()
    assert result.written == 1050 and result.batches == 11


def test_back_pressure_blocks_producer_while_database_is_stuck(ready: str) -> None:
    holder = psycopg.connect(ready)
    holder.execute("LOCK TABLE call_logs IN ACCESS EXCLUSIVE MODE")
    w = Writer(ready, batch_rows=10, max_pending=2)
    done = threading.Event()

    def produce() -> None:
        w.write_many(make_calls(500))
        done.set()

    t = threading.Thread(target=produce)
    t.start()
    time.sleep(1.0)
    assert not done.is_set(), "the producer must wait, not buffer without bound"
    assert w._queue.qsize() <= 2
    holder.rollback()
    holder.close()
    t.join(timeout=30)
    assert done.is_set()
    w.close()
    assert count(ready) == 500


def test_database_refused_rows_are_isolated(ready: str) -> None:
    with psycopg.connect(ready, autocommit=True) as c:
        c.execute("ALTER TABLE call_logs ADD CONSTRAINT short_transcripts CHECK (length(transcript) < 40)")
    calls = make_calls(200)
    calls[17]["transcript"] = "x" * 100
    calls[133]["transcript"] = "y" * 100
    with Writer(ready) as w:
        w.write_many(calls)
        result = w.flush()
    assert (result.written, result.quarantined, result.fallbacks) == (198, 2, 1)
    reasons = [r for r, _ in quarantined(ready)]
    assert all("short_transcripts" in r for r in reasons)


def test_quarantine_replay_after_maintain(ready: str) -> None:
    ahead = datetime.now(UTC) + timedelta(weeks=30)
    call = dict(make_calls(1)[0], started_at=ahead, ended_at=ahead + timedelta(seconds=5))
    with Writer(ready) as w:
        w.write(call)
        assert w.flush().quarantined == 1
    listed = run_json("quarantine", "list", "--dsn", ready)
    assert len(listed) == 1 and "premake horizon" in listed[0]["reason"]
    still = run_json("quarantine", "replay", "--dsn", ready)
    assert still["still_bad"] == 1 and still["written"] == 0
    assert [r["id"] for r in still["refused"]] == [listed[0]["id"]]
    assert "premake horizon" in still["refused"][0]["reason"]
    run("init", "--dsn", ready, "--premake", "40")
    run("maintain", "--dsn", ready)
    report = run_json("quarantine", "replay", "--dsn", ready)
    assert report == {"tried": 1, "written": 1, "duplicates": 0, "still_bad": 0, "refused": []}
    assert count(ready) == 1 and run_json("quarantine", "list", "--dsn", ready) == []


def test_writer_refuses_uninitialised_database(dsn: str) -> None:
    with pytest.raises(NotInitialised, match="callvault init"):
        Writer(dsn)


def test_async_writer_idempotent_and_quarantines(ready: str) -> None:
    calls = make_calls(300)

    async def go() -> tuple[object, object]:
        async with AsyncWriter(ready, batch_rows=100) as w:
            await w.write_many(calls)
            first = await w.flush()
            await w.write_many(calls[:50])
            await w.write(dict(calls[0], call_id="not-a-uuid"))
            second = await w.flush()
        return first, second

    first, second = asyncio.run(go())
    assert (first.written, first.duplicates) == (300, 0)  # type: ignore[attr-defined]
    assert (second.written, second.duplicates, second.quarantined) == (0, 50, 1)  # type: ignore[attr-defined]
    assert count(ready) == 300


def test_killed_backend_mid_write_loses_and_doubles_nothing(ready: str) -> None:
    calls = make_calls(60_000, tenants=50, spacing_s=0.5)
    kills = 0
    with Writer(ready, batch_rows=2_000) as w:
        t = threading.Thread(target=w.write_many, args=(calls,))
        t.start()
        with psycopg.connect(ready, autocommit=True) as admin:
            # Only a backend busy with a batch: killing an idle one is healed by the pool's check
            # (no retry). Loop on what is written, not on the producer (it only enqueues).
            deadline = time.monotonic() + 60
            while w.stats.written < len(calls) and kills < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
                kills += admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = 'callvault-writer' AND state = 'active' AND pid <> pg_backend_pid()"
                ).fetchone()[0]
        t.join()
        result = w.flush()
    stats = w.stats
    assert kills >= 1 and stats.retries >= 1
    assert count(ready) == 60_000
    with psycopg.connect(ready) as c:
        assert c.execute("SELECT count(DISTINCT (tenant_id, call_id)) FROM call_logs").fetchone()[0] == 60_000
    assert stats.written + stats.duplicates == 60_000 and result.quarantined == 0


@pytest.fixture
def scratch_cluster() -> Iterator[Cluster]:
    home = Path(tempfile.mkdtemp(prefix="callvault-restart-", dir="/tmp"))
    home.chmod(0o755)
    cluster = Cluster(home, settings={"fsync": "off"})
    cluster.up()
    try:
        yield cluster
    finally:
        cluster.down()
        shutil.rmtree(home, ignore_errors=True)  # its data directory: 50 MB per test left in /tmp otherwise


def test_database_gone_for_good_keeps_every_row(scratch_cluster: Cluster) -> None:
    dsn = scratch_cluster.dsn()
    run("init", "--dsn", dsn)
    calls = make_calls(300)
    w = Writer(dsn, retry_for=1.0, batch_rows=100)
    w.write_many(calls[:100])
    assert w.flush().written == 100
    scratch_cluster.down()
    w.write_many(calls[100:250])
    w.write(dict(calls[250], tenant_id="bad"))
    with pytest.raises(WriterError) as info:
        w.flush()
    with pytest.raises(WriterError) as closing:
        w.close()
    kept = closing.value.unwritten
    assert len(info.value.unwritten) >= 100
    assert len(kept) == 151  # 150 good rows not committed + the rejected one, none lost
    assert {str(r["call_id"]) for r in kept if isinstance(r, dict)} >= {str(c["call_id"]) for c in calls[100:250]}
    scratch_cluster.up()
    with Writer(dsn) as again:  # what the application does with them: write them again
        again.write_many(kept)
        result = again.flush()
    assert (result.written, result.quarantined) == (150, 1)
    assert count(dsn) == 250


def test_async_writer_must_be_opened(ready: str) -> None:
    async def go() -> None:
        w = AsyncWriter(ready)
        with pytest.raises(WriterError, match="not open"):
            await w.write(make_calls(1)[0])

    asyncio.run(go())


def test_server_restart_while_writing(scratch_cluster: Cluster) -> None:
    """The server stops mid-stream and stays down longer than one pool wait; every row lands once.

    Deterministic whatever the machine's speed: the second half is handed to the writer only after
    the server is down, so at least one batch meets the dead server (a PoolTimeout after
    CONNECT_WAIT_S, then a retry). The first half races the stop (a COPY may or may not be cut)."""
    from callvault.ingest.writer import CONNECT_WAIT_S

    cluster = scratch_cluster
    dsn = cluster.dsn()
    run("init", "--dsn", dsn)
    calls = make_calls(40_000, tenants=20, spacing_s=0.5)
    with Writer(Settings(dsn=dsn), batch_rows=1_000) as w:
        first = threading.Thread(target=w.write_many, args=(calls[:20_000],))
        first.start()
        deadline = time.monotonic() + 30
        while w.stats.written < 2_000 and time.monotonic() < deadline:  # mid-stream, whatever the load
            time.sleep(0.01)
        cluster.down()
        second = threading.Thread(target=w.write_many, args=(calls[20_000:],))
        second.start()
        time.sleep(CONNECT_WAIT_S + 1.0)
        cluster.up()
        first.join()
        second.join()
        w.flush()
    assert w.stats.retries >= 1
    assert count(dsn) == 40_000
    with psycopg.connect(dsn) as c:
        assert c.execute("SELECT count(DISTINCT call_id) FROM call_logs").fetchone()[0] == 40_000
