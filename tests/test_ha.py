"""A primary that fails: a real Patroni + etcd cluster (``callvault.ha_cluster``, three nodes, synchronous
mode) under continuous ingest, reads and a worker, while the primary is killed (SIGKILL of Patroni and
Postgres), stopped cleanly and switched over. A ledger of every acknowledged call id is checked against the
rows afterwards; an archive killed half-way resumes from its journal on the new primary; pg_cron's
maintenance runs on whichever node is primary. Nothing here is mocked."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest

from callvault import catalog
from callvault.archive.journal import relation_state
from callvault.archive.pipeline import archive
from callvault.bench import data
from callvault.bench.archive import _past_retention
from callvault.config import Settings
from callvault.db import connect
from callvault.errors import DatabaseUnavailable, WriterError
from callvault.ha_cluster import HACluster, missing_software
from callvault.ingest import Writer
from callvault.query import Reader
from tests.helpers import run, run_json
from tests.test_archive import CLI

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the HA lab runs on Linux")
RATE = 1500  # rows per second the ledger's writer offers
CHUNK = 250  # rows acknowledged together (one flush)


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HACluster]:
    if (why := missing_software()) is not None:
        pytest.fail(why, pytrace=False)  # make test installs both: missing is a broken setup, not a skip
    home = tmp_path_factory.mktemp("ha-home")
    for p in [home, *home.parents]:  # the server's OS user walks to its data directories
        if p != Path("/"):
            p.chmod(p.stat().st_mode | 0o711)
    lab = HACluster(home)
    lab.up()
    lab.wait_healthy(180)
    run("init", "--dsn", lab.dsn())
    yield lab
    lab.down()


def _calls(
    n: int, seed: int, start: datetime | None = None, span: timedelta = timedelta(days=2)
) -> Iterator[dict[str, Any]]:
    for c in data.calls(n, tenants=8, span=span, seed=seed, now=start):
        yield {"tenant_id": c.tenant_id, "call_id": c.call_id, "started_at": c.started_at, "ended_at": c.ended_at,
               "duration_sec": c.duration_sec, "transcript": c.transcript}  # fmt: skip


def _call_rows(
    n: int, seed: int, start: datetime | None = None, span: timedelta = timedelta(days=2)
) -> list[dict[str, Any]]:
    return list(_calls(n, seed, start, span))


class Ledger(threading.Thread):
    """Writes at ``RATE`` rows/s through the multi-host DSN until stopped; records every acknowledged
    call id (a chunk is acknowledged when its flush returned) and each flush's start and seconds."""

    def __init__(self, lab: HACluster) -> None:
        super().__init__(daemon=True)
        self.settings = Settings(dsn=lab.dsn())
        self.stop = threading.Event()
        self.sent: set[UUID] = set()
        self.acked: list[UUID] = []
        self.tenant_of: dict[UUID, UUID] = {}
        self.flushes: list[tuple[float, float]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        rows = _calls(400_000, seed=31)
        try:
            with Writer(self.settings, batch_rows=CHUNK, retry_for=120) as w:
                while not self.stop.is_set():
                    chunk = [next(rows) for _ in range(CHUNK)]
                    self.tenant_of.update((r["call_id"], r["tenant_id"]) for r in chunk)
                    self.sent.update(r["call_id"] for r in chunk)
                    t0 = time.monotonic()
                    w.write_many(chunk)
                    w.flush()
                    took = time.monotonic() - t0
                    self.flushes.append((t0, took))
                    self.acked += [r["call_id"] for r in chunk]
                    time.sleep(max(0.0, CHUNK / RATE - took))
        except BaseException as exc:  # checked by the test
            self.error = exc


class Reads(threading.Thread):
    """Reads one tenant's newest calls through the readers' DSN; records any row of another tenant."""

    def __init__(self, lab: HACluster, tenant: UUID, tenant_of: dict[UUID, UUID]) -> None:
        """``tenant_of``: every call id sent so far, to its tenant (the ledger's, growing)."""
        super().__init__(daemon=True)
        self.dsn, self.tenant, self.tenant_of = lab.dsn(readers=True), tenant, tenant_of
        self.stop = threading.Event()
        self.reads, self.failed, self.foreign = 0, 0, 0

    def run(self) -> None:
        now = datetime.now(UTC)
        while not self.stop.is_set():
            try:
                with psycopg.connect(self.dsn, connect_timeout=3) as conn:
                    reader = Reader(conn, Settings(dsn=self.dsn))
                    while not self.stop.is_set():
                        page = reader.recent_calls(
                            self.tenant, since=now - timedelta(days=7), until=now + timedelta(days=1)
                        )
                        owners = [self.tenant_of.get(c.call_id) for c in page.calls]  # None: a call no one sent
                        self.foreign += sum(1 for t in owners if t != self.tenant)
                        self.reads += 1
                        time.sleep(0.05)
            except psycopg.Error:
                self.failed += 1  # the node went away: connect again (another one)
                time.sleep(0.2)


def _outage(flushes: list[tuple[float, float]], t0: float, t1: float) -> float:
    """The longest a flush that started in [t0, t1] waited: the write outage of that failover."""
    return max((took for start, took in flushes if t0 - 5 <= start <= t1), default=0.0)


def test_acknowledged_calls_survive_kill_stop_isolation_and_switchover(ha: HACluster) -> None:
    ledger = Ledger(ha)
    ledger.start()
    time.sleep(3)
    reads = Reads(ha, _call_rows(1, seed=31)[0]["tenant_id"], ledger.tenant_of)  # the ledger's first tenant
    reads.start()
    events: list[dict[str, Any]] = []
    for how in ("kill", "stop", "isolate", "switchover"):
        old = ha.wait_healthy(180)  # both standbys back and streaming, one synchronous: then fail again
        t0 = time.monotonic()
        if how == "kill":
            ha.kill_node(old)
            new = ha.wait_primary(120, other_than=old)
        elif how == "stop":
            ha.stop_node(old)
            new = ha.wait_primary(120, other_than=old)
        elif how == "isolate":  # cut off from etcd: its Postgres still serves its clients until Patroni demotes it
            ha.isolate_node(old)
            new = ha.wait_primary(120, other_than=old)
            ha.heal_node(old)
        else:
            new = ha.switchover()
        t1 = time.monotonic()
        ha.start_node(old)  # it rejoins as a standby (pg_rewind when it was ahead)
        time.sleep(2)  # the writer runs on the new primary a while
        events.append({"how": how, "from": old, "to": new, "promoted_s": round(t1 - t0, 1),
                       "outage_s": round(_outage(ledger.flushes, t0, time.monotonic()), 2)})  # fmt: skip
    ha.wait_healthy(180)
    ledger.stop.set()
    reads.stop.set()
    ledger.join(120)
    reads.join(30)
    assert ledger.error is None, f"the writer failed: {ledger.error!r}"
    with psycopg.connect(ha.dsn()) as conn:
        got: dict[UUID, int] = dict(conn.execute("SELECT call_id, count(*) FROM call_logs GROUP BY call_id").fetchall())
    missing = [c for c in ledger.acked if c not in got]
    assert not missing, f"{len(missing)} acknowledged calls lost: {missing[:3]}"
    assert all(n == 1 for n in got.values()), "a call is stored twice"
    assert set(got) <= ledger.sent, "a call nobody sent is stored"
    assert reads.reads > 0 and reads.foreign == 0
    # status/health/metrics say which node is primary, its standbys, and the promotion that just happened
    st = run_json("status", "--dsn", ha.dsn())
    assert st["server"]["in_recovery"] is False and st["server"]["port"] == ha._need().pg_ports[events[-1]["to"]]
    assert st["server"]["timeline"] >= 5 and st["server"]["promoted_at"] is not None  # four promotions
    assert any("became the primary" in n for n in st["notes"])
    assert {s["sync_state"] for s in st["server"]["standbys"]} >= {"sync"}
    standby = run_json("status", "--dsn", ha.node_dsn(events[-1]["from"]))
    assert standby["server"]["in_recovery"] is True and any("is a standby" in n for n in standby["notes"])
    text = run("metrics", "--dsn", ha.dsn()).stdout
    assert 'callvault_server_in_recovery{table="public.call_logs"} 0.0' in text
    assert 'callvault_server_standbys{sync_state="sync",table="public.call_logs"} 1.0' in text
    outages = [e["outage_s"] for e in events]
    print("failovers:", json.dumps(events), "outage p50/max:", statistics.median(outages), max(outages),
          "acked:", len(ledger.acked))  # fmt: skip
    assert len(ledger.acked) >= 5 * RATE


def test_after_a_failover_an_archive_resumes_and_pg_cron_maintains_on_the_new_primary(
    ha: HACluster, tmp_path: Path
) -> None:
    """The archiver dies after its export; the primary dies; the next run resumes from the journal on the
    new primary (nothing exported twice, archived rows = written rows). pg_cron's maintenance job (every
    minute: pg_cron 1.4) is in the replicated cron.job table and runs on whichever node is primary."""
    from callvault.schedule import job_command

    s = Settings(dsn=ha.dsn())
    with connect(s) as conn:
        parts = [p.info for p in catalog.list_partitions(conn, s) if not p.info.is_default and p.info.start]
    oldest = min(parts, key=lambda p: p.start)  # type: ignore[arg-type,return-value]
    assert oldest.start is not None and oldest.end is not None
    rows = _call_rows(3000, seed=77, start=oldest.end - timedelta(minutes=5), span=timedelta(days=6))
    with Writer(s) as w:
        w.write_many(rows)
        written = w.flush().written
    at = _past_retention(oldest.end, s.lifecycle.retention) + timedelta(days=1)  # type: ignore[arg-type]
    store = (tmp_path / "store").as_uri()
    with psycopg.connect(ha.dsn(database="postgres"), autocommit=True) as cron:
        cron.execute("SELECT cron.schedule_in_database('callvault-ha-test', '* * * * *', %s, 'callvault')",
                     (job_command(s),))  # fmt: skip
    died = subprocess.run(
        [CLI, "archive", "--dsn", ha.dsn(), "--to", store, "--at", at.isoformat(),
         "--new-store"],
        env={**os.environ, "CALLVAULT_FAULT_AFTER": "export"}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert died.returncode == -9, died.stderr
    old = ha.wait_healthy(180)  # a synchronous standby to promote: without one Patroni never fails over
    ha.kill_node(old)
    new = ha.wait_primary(120, other_than=old)
    # runs after the promotion are the rows the new primary adds to job_history: counted by id, not by time
    # (under an outer libfaketime a Postgres started by Patroni mixes clocks: its postmaster and the
    # processes it forks late, pg_cron's among them, turn to the real time while client backends keep the
    # faked one, so no timestamp of one can be compared with the other's)
    with psycopg.connect(ha.node_dsn(new)) as c:
        last = c.execute("SELECT coalesce(max(id), 0) FROM callvault.job_history").fetchone()[0]  # type: ignore[index]
    report = archive(s, store_url=store, at=at)
    mine = [p for p in report.partitions if p.partition == oldest.name]
    assert mine and mine[0].error is None and mine[0].step_before == "exported", report.to_dict()
    (manifest,) = (tmp_path / "store").rglob("_manifests/*.json")  # what was archived, verified, then dropped
    doc = json.loads(manifest.read_text())
    archived = sum(int(t["rows"]) for t in doc["tenants"].values())
    assert doc["rows"] == archived
    assert archived == written == len(rows)
    with connect(s) as conn:
        assert relation_state(conn, s, oldest.name) == "missing"
    ha.start_node(old)
    deadline = time.monotonic() + 75  # the next minute, and the job's run
    try:
        with psycopg.connect(ha.node_dsn(new), autocommit=True) as conn:
            while True:
                ran = conn.execute(
                    "SELECT count(*) FROM callvault.job_history WHERE job = 'maintain' AND outcome = 'ok' "
                    "AND id > %s", (last,),
                ).fetchone()  # fmt: skip
                if ran and ran[0] > 0:
                    break
                assert time.monotonic() < deadline, "pg_cron's maintenance never ran on the new primary"
                time.sleep(1)
    finally:
        with psycopg.connect(ha.dsn(database="postgres"), autocommit=True) as cron:
            cron.execute("SELECT cron.unschedule('callvault-ha-test')")
    ha.wait_healthy(180)


def test_a_mirror_whose_slot_stayed_on_the_old_primary_is_reported_and_resynced_once(
    ha: HACluster, empty_dsn: str
) -> None:
    """PostgreSQL 15 keeps a logical slot on one server: after a switchover the mirror's slot is not on the
    new primary. `mirror status` and `health` say so and name `mirror resync`, which copies the table
    again: every row on the target once, rows written after the failover included."""
    from tests.test_publish import wait_for

    s = Settings(dsn=ha.dsn())
    with Writer(s) as w:
        w.write_many(_call_rows(400, seed=91))
        w.flush()
    run("mirror", "create", "--dsn", ha.dsn(), "--to", empty_dsn, "--name", "ha")
    count = "SELECT count(*), count(DISTINCT call_id) FROM call_logs"
    try:
        with psycopg.connect(ha.dsn()) as prim:
            total = prim.execute(count).fetchone()
        with psycopg.connect(empty_dsn, autocommit=True) as tgt:
            assert wait_for(tgt, count, total, timeout=120) == total
        ha.wait_healthy(180)
        ha.switchover()
        with Writer(s) as w:  # after the failover: only a resync brings these to the target
            w.write_many(_call_rows(300, seed=92))
            w.flush()
        st = run_json("mirror", "status", "--dsn", ha.dsn())
        assert st["mirrors_without_slot"] == ["callvault_mirror_ha"] and not st["healthy"]
        assert any("mirror resync --name ha" in p for p in st["problems"])
        sick = run("health", "--dsn", ha.dsn(), ok=False)
        assert sick.exit_code == 3 and "mirror resync --name ha" in sick.stdout + sick.stderr
        done = run_json("mirror", "resync", "--dsn", ha.dsn(), "--name", "ha", "--to", empty_dsn)
        assert any("emptied" in step for step in done["steps"]) and any("subscription" in x for x in done["steps"])
        with psycopg.connect(ha.dsn()) as prim:
            total = prim.execute(count).fetchone()
        assert total is not None and total[0] == total[1]
        with psycopg.connect(empty_dsn, autocommit=True) as tgt:
            assert wait_for(tgt, count, total, timeout=120) == total  # every row once
        assert run_json("mirror", "status", "--dsn", ha.dsn())["mirrors_without_slot"] == []
    finally:
        run("mirror", "drop", "--dsn", ha.dsn(), "--name", "ha", "--to", empty_dsn, ok=False)
    bad = run("mirror", "resync", "--dsn", ha.dsn(), "--name", "nope", ok=False)
    assert bad.exit_code == 2 and "no mirror callvault_mirror_nope" in bad.stderr and "Traceback" not in bad.stderr


def test_a_mirror_whose_slot_patroni_keeps_permanent_carries_on_after_a_switchover(
    ha: HACluster, empty_dsn: str
) -> None:
    """`mirror create --patroni`: the slot is declared permanent in Patroni's configuration, Patroni copies it
    to each standby, and after a switchover the subscription continues on the new primary with no resync:
    every row on the target once, the rows written after the switchover included."""
    from tests.test_publish import wait_for

    s = Settings(dsn=ha.dsn())
    with Writer(s) as w:
        w.write_many(_call_rows(300, seed=93))
        w.flush()
    made = run_json("mirror", "create", "--dsn", ha.dsn(), "--to", empty_dsn, "--name", "perm",
                    "--patroni", ha.api_url())  # fmt: skip
    assert any("permanent in Patroni" in step for step in made["steps"])
    count = "SELECT count(*), count(DISTINCT call_id) FROM call_logs"
    try:
        leader = ha.wait_healthy(180)
        deadline = time.monotonic() + 180  # Patroni copies the slot to each standby (and restarts it once)
        for node in (n for n in ("node1", "node2", "node3") if n != leader):
            while True:
                try:
                    with psycopg.connect(ha.node_dsn(node), connect_timeout=3) as c:
                        if c.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = 'callvault_mirror_perm'"
                                     ).fetchone():  # fmt: skip
                            break
                except psycopg.OperationalError:
                    pass  # restarting to load the copied slot
                assert time.monotonic() < deadline, f"Patroni never copied the slot to {node}"
                time.sleep(1)
        time.sleep(3)  # the copies' position advanced past the initial copy (every loop_wait)
        ha.wait_healthy(180)
        ha.switchover()
        with Writer(s) as w:
            w.write_many(_call_rows(200, seed=94))
            w.flush()
        with psycopg.connect(ha.dsn()) as prim:
            total = prim.execute(count).fetchone()
        assert total is not None and total[0] == total[1]
        with psycopg.connect(empty_dsn, autocommit=True) as tgt:
            assert wait_for(tgt, count, total, timeout=120) == total, "the subscription continued on the new primary"
        st = run_json("mirror", "status", "--dsn", ha.dsn())
        # (a node that was primary before keeps its copies of earlier mirrors' slots: docs/ha.md, not done)
        assert st["mirrors_without_slot"] == [] and "callvault_mirror_perm" in [x["slot"] for x in st["slots"]]
    finally:
        dropped = run_json("mirror", "drop", "--dsn", ha.dsn(), "--name", "perm", "--to", empty_dsn)
        assert any("no longer permanent" in step for step in dropped["steps"])
    bad = run("mirror", "create", "--dsn", ha.dsn(), "--to", empty_dsn, "--patroni", "ftp://x", ok=False)
    assert bad.exit_code == 2 and "Patroni REST API URL" in bad.stderr


# -- bad input ------------------------------------------------------------------------------------------
def _standbys(ha: HACluster) -> list[str]:
    primary = ha.primary()
    return [n for n in ("node1", "node2", "node3") if n != primary]


def test_the_worker_refuses_a_standby(ha: HACluster) -> None:
    done = run("worker", "--once", "--dsn", ha.node_dsn(_standbys(ha)[0]), ok=False)
    assert done.exit_code == 69
    lines = [x for x in done.stderr.strip().splitlines() if x]
    assert len(lines) == 1 and "in recovery" in lines[0] and "target_session_attrs=read-write" in lines[0]
    assert "Traceback" not in done.stderr


def test_a_dsn_listing_no_primary_is_one_line(ha: HACluster) -> None:
    state = ha._need()
    hosts = ",".join(f"127.0.0.1:{state.pg_ports[n]}" for n in _standbys(ha))
    dsn = f"postgresql://{state.superuser}:{state.password}@{hosts}/callvault?target_session_attrs=read-write"
    with pytest.raises((DatabaseUnavailable, WriterError)) as err, Writer(Settings(dsn=dsn), retry_for=2) as w:
        w.write_many(_call_rows(10, seed=5))
        w.flush()
    assert state.password not in str(err.value)
    done = run("maintain", "--dsn", dsn, ok=False)
    assert done.exit_code == 69 and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_missing_etcd_or_patroni_names_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util
    import shutil

    monkeypatch.setattr(shutil, "which", lambda _name: None)
    monkeypatch.setattr(Path, "exists", lambda self: False if str(self) == "/usr/bin/etcd" else os.path.exists(self))
    assert missing_software() == "etcd is not installed: apt-get install etcd-server"
    monkeypatch.undo()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "patroni" else real(name, *a))
    why = missing_software()
    assert why is not None and why.startswith("Patroni is not installed: pip install")
