"""Observability: the table's Prometheus metrics, the writers' metrics, the job history, the shipped alert
rules (promtool) and dashboard, and a real Prometheus scraping a real worker."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from callvault import history, metrics
from callvault.config import Settings
from callvault.db import connect
from callvault.errors import WriterError
from callvault.ingest import reasons
from callvault.ingest.aio import AsyncWriter
from callvault.ingest.writer import Writer
from callvault.monitor import collect
from tests.helpers import make_calls, run, run_json

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "docs" / "monitoring"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) not installed")


def samples(text: str | bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    body = text.decode() if isinstance(text, bytes) else text
    out = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    want = {"table": "public.call_logs", **labels}
    hits = [v for (n, ls), v in found.items() if n == name and want.items() <= dict(ls).items()]
    assert len(hits) == 1, f"{name}{labels}: {len(hits)} samples"
    return hits[0]


PARTITIONS = "SELECT relname FROM pg_class WHERE relname LIKE 'call_logs_p%' AND relispartition AND relkind = 'r'"


def a_partition(conn: psycopg.Connection[Any], *, newest: bool) -> tuple[str]:
    """The newest (or oldest) partition's name, as a one-column row."""
    order = " ORDER BY relname DESC LIMIT 1" if newest else " ORDER BY relname LIMIT 1"
    row = conn.execute(PARTITIONS + order).fetchone()
    assert row is not None
    return (str(row[0]),)


def current_start(dsn: str) -> datetime:
    """The start of the partition holding the server's now: test rows are derived from it."""
    s = Settings(dsn=dsn)
    with connect(s) as conn:
        st = collect(conn, s)
    return next(p.start for p in st.partitions if p.state == "current" and p.start is not None)


# -- reason codes (pure) ----------------------------------------------------------------------------------------


def test_reason_codes_python_and_sql_agree(conn: psycopg.Connection) -> None:
    from callvault.ingest.validate import LiveRange, Rules, validate

    t0 = datetime(2026, 1, 5, tzinfo=UTC)
    live = LiveRange([(t0, t0 + timedelta(days=7)), (t0 + timedelta(days=14), t0 + timedelta(days=21))])
    rules = Rules(live=live)
    good = {"tenant_id": "0f8fad5b-d9cb-469f-a165-70867728950e", "call_id": "1f8fad5b-d9cb-469f-a165-70867728950e",
            "started_at": t0 + timedelta(hours=1)}  # fmt: skip
    cases = {
        "no_partition": [
            {**good, "started_at": t0 + timedelta(days=30)},
            {**good, "started_at": t0 + timedelta(days=9)},
        ],
        "too_old": [{**good, "started_at": t0 - timedelta(days=1)}],
        "unknown_field": [{**good, "tenant": 1}],
        "missing_field": [{"call_id": good["call_id"]}],
        "bad_id": [{**good, "tenant_id": "nope"}],
        "bad_timestamp": [{**good, "started_at": "yesterday"}, {**good, "ended_at": t0 - timedelta(days=3)}],
        "bad_duration": [{**good, "duration_sec": -1}],
        "bad_transcript": [{**good, "transcript": "a\x00b"}],
        "bad_metadata": [{**good, "metadata": [1]}],
        "not_a_call": [42],
    }
    texts = {}
    for code, calls in cases.items():
        for call in calls:
            out = validate(call, rules)
            reason = getattr(out, "reason", None)
            assert reason is not None, call
            assert reasons.code(reason) == code, reason
            texts[reason] = code
    texts["refused by the database: value too long"] = "refused_by_database"
    texts['no partition of relation "call_logs" found for row: run ...'] = "no_partition"
    texts["something new"] = reasons.OTHER
    for reason, code in texts.items():
        row = conn.execute(
            psycopg.sql.SQL("SELECT {}").format(reasons.sql_case(psycopg.sql.Literal(reason)))
        ).fetchone()
        assert row is not None and row[0] == code, reason


# -- the table's metrics ----------------------------------------------------------------------------------------


def test_metrics_cover_lifecycle_archive_tenancy_quarantine(dsn: str, tmp_path: Path) -> None:
    run("init", "--dsn", dsn, "--default-partition")
    start = current_start(dsn)
    calls = make_calls(30, start=start + timedelta(minutes=1), tenants=3)
    bad = [{**calls[0], "call_id": "x"}, {**calls[1], "started_at": start + timedelta(days=400), "ended_at": None}]
    registry = CollectorRegistry()
    with Writer(dsn, metrics=registry) as w:
        w.write_many(calls + bad)
    got = samples(metrics.render(Settings(dsn=dsn)))
    assert value(got, "callvault_up") == 1
    for state in ("past", "current", "future"):
        assert value(got, "callvault_partitions", state=state) >= 1
    assert value(got, "callvault_partitions", state="default") == 1
    assert value(got, "callvault_premake_horizon_seconds") >= value(got, "callvault_premake_horizon_min_seconds") > 0
    assert value(got, "callvault_default_partition_rows") == 0
    assert value(got, "callvault_health_problems") == 0
    assert value(got, "callvault_retention_seconds") == 90 * 86400
    assert value(got, "callvault_partition_gaps") == 0
    assert value(got, "callvault_quarantine_rows", reason="bad_id") == 1
    assert value(got, "callvault_quarantine_rows", reason="no_partition") == 1
    assert value(got, "callvault_quarantine_rows", reason="too_old") == 0
    assert value(got, "callvault_isolation_problems", severity="leak") == 0
    assert value(got, "callvault_archive_backlog_partitions", stage="detached") == 0
    assert (
        value(got, "callvault_job_runs_total", operation="maintain", outcome="ok") == 0
    )  # init is not a maintenance run

    run("maintain", "--dsn", dsn)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("INSERT INTO call_logs (tenant_id, call_id, started_at) VALUES (gen_random_uuid(), "
                  "gen_random_uuid(), '1990-01-01')")  # fmt: skip
        part = a_partition(c, newest=True)
        assert part is not None
        c.execute(psycopg.sql.SQL("GRANT SELECT ON {} TO PUBLIC").format(psycopg.sql.Identifier(part[0])))
    got = samples(metrics.render(Settings(dsn=dsn)))
    assert value(got, "callvault_default_partition_rows") == 1
    # an error while RLS on the partition still holds; a leak too when a role the grant reaches escapes it
    # (the test cluster's roles are shared by every test)
    assert sum(value(got, "callvault_isolation_problems", severity=v) for v in ("error", "leak")) >= 1
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(psycopg.sql.SQL("CREATE POLICY wide_open ON {} USING (true)").format(psycopg.sql.Identifier(part[0])))
    got = samples(metrics.render(Settings(dsn=dsn)))
    assert value(got, "callvault_isolation_problems", severity="leak") >= 1
    assert value(got, "callvault_health_problems") >= 2
    assert value(got, "callvault_job_runs_total", operation="maintain", outcome="ok") == 1
    assert value(got, "callvault_job_last_run_ok", operation="maintain") == 1
    assert value(got, "callvault_maintenance_last_created_partitions") == 0


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed")
def test_metrics_cli_and_textfile_pass_promtool(dsn: str, tmp_path: Path) -> None:
    run("init", "--dsn", dsn)
    text = run("metrics", "--dsn", dsn).stdout
    check = subprocess.run([str(PROMTOOL), "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    as_json = run_json("metrics", "--dsn", dsn)
    assert {"name": "callvault_up", "labels": {"table": "public.call_logs"}, "value": 1.0} in as_json
    target = tmp_path / "callvault.prom"
    run("metrics", "--dsn", dsn, "--textfile", str(target))
    assert samples(target.read_text()) == samples(text) or "callvault_up" in target.read_text()
    assert not list(tmp_path.glob("*.tmp*")), "the textfile is written through a temporary file and renamed"


def test_metrics_bad_input_one_line(dsn: str, empty_dsn: str, tmp_path: Path) -> None:
    run("init", "--dsn", dsn)
    for args, code, words in (
        (["--textfile", str(tmp_path / "callvault.txt")], 2, "*.prom"),
        (["--textfile", str(tmp_path / "nope" / "callvault.prom")], 2, "does not exist"),
    ):
        r = run("metrics", "--dsn", dsn, *args, ok=False)
        assert r.exit_code == code and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = run("metrics", "--dsn", empty_dsn, ok=False)
    assert r.exit_code == 66 and "callvault init" in r.stderr and "Traceback" not in r.stderr
    target = tmp_path / "callvault.prom"
    target.write_text('callvault_up{table="public.call_logs"} 1.0\n')  # what an earlier good run left
    r = run("metrics", "--dsn", empty_dsn, "--textfile", str(target), ok=False)
    assert r.exit_code == 66
    assert value(samples(target.read_text()), "callvault_up") == 0  # node_exporter must not serve the old file
    r = run("metrics", "--dsn", dsn, "--textfile", str(target), "--json", ok=False)
    assert r.exit_code == 2 and "choose one" in r.stderr
    r = run("history", "--dsn", dsn, "--since", "0h", ok=False)
    assert r.exit_code == 2 and "--since" in r.stderr
    r = run("worker", "--dsn", dsn, "--metrics-port", "70000", ok=False)
    assert r.exit_code == 2 and "--metrics-port" in r.stderr


def test_collection_never_waits_on_locks(realtime_dsn: str) -> None:
    """DDL holding a partition: a collection gives up after the 100 ms lock budget and serves the last good
    metrics with callvault_up 0; a writer into the same table meanwhile is not held behind the collector."""
    run("init", "--dsn", realtime_dsn)
    s = Settings(dsn=realtime_dsn)
    registry, collector = metrics.registry_for(s)
    try:
        assert collector.refresh(force=True)
        with psycopg.connect(realtime_dsn) as holder:
            part = a_partition(holder, newest=False)
            assert part is not None
            holder.execute(psycopg.sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                psycopg.sql.Identifier(part[0])))  # fmt: skip
            t0 = time.perf_counter()
            assert not collector.refresh(force=True)
            waited = time.perf_counter() - t0
            got = samples(generate_latest(registry))
            assert value(got, "callvault_up") == 0
            assert value(got, "callvault_partitions", state="future") >= 1  # the last good collection's
            assert "lock" in collector.problems[0]
            holder.rollback()
        assert waited < 30  # bounded by the lock budget, not by the holder (which would wait forever)
        assert collector.refresh(force=True)
        assert value(samples(generate_latest(registry)), "callvault_up") == 1
    finally:
        collector.close()


def test_collection_is_a_fixed_number_of_statements(dsn: str) -> None:
    """No statement per partition: 20 or 60 partitions cost the same statements."""
    run("init", "--dsn", dsn, "--premake", "4")
    s = Settings(dsn=dsn)
    with connect(s, autocommit=True) as conn:
        few = metrics.snapshot(conn, s).statements
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("UPDATE partman.part_config SET premake = 44 WHERE parent_table = 'public.call_logs'")
    run("maintain", "--dsn", dsn)
    with connect(s, autocommit=True) as conn:
        snap = metrics.snapshot(conn, s)
    assert len(snap.status.partitions) >= 50
    assert snap.statements == few


# -- the writers' metrics ---------------------------------------------------------------------------------------


def test_writer_metrics_on_a_given_registry(dsn: str) -> None:
    run("init", "--dsn", dsn)
    start = current_start(dsn)
    calls = make_calls(40, start=start + timedelta(minutes=1))
    registry = CollectorRegistry()
    with Writer(dsn, metrics=registry, batch_rows=10) as w:
        w.write_many(calls)
        w.flush()
        w.write_many([*calls[:10], {**calls[0], "started_at": "soon"}])
    got = samples(generate_latest(registry))
    assert value(got, "callvault_writer_rows_written_total") == 40
    assert value(got, "callvault_writer_rows_duplicate_total") == 10
    assert value(got, "callvault_writer_rows_quarantined_total", reason="bad_timestamp") == 1
    batches = sum(value(got, "callvault_writer_batches_total", path=p) for p in ("copy", "idempotent"))
    assert batches == value(got, "callvault_writer_flush_seconds_count")
    assert value(got, "callvault_writer_batches_total", path="idempotent") >= 1  # the duplicates' batch
    assert value(got, "callvault_writer_flush_seconds_count") >= 5
    assert value(got, "callvault_writer_queue_batches") == 0
    assert value(got, "callvault_writer_retries_total") == 0
    assert value(got, "callvault_writer_failures_total") == 0

    async def go() -> None:
        async with AsyncWriter(dsn, metrics=registry) as aw:
            await aw.write_many(make_calls(5, start=start + timedelta(minutes=2), seed=9))

    asyncio.run(go())
    assert value(samples(generate_latest(registry)), "callvault_writer_rows_written_total") == 45  # shared series

    with Writer(dsn, metrics=False) as w:  # opted out: nothing registered anywhere
        w.write_many(make_calls(3, start=start + timedelta(minutes=3), seed=11))
    assert value(samples(generate_latest(registry)), "callvault_writer_rows_written_total") == 45


def test_writer_metrics_connection_failure_and_give_up(dsn: str, cluster: Any) -> None:
    run("init", "--dsn", dsn)
    start = current_start(dsn)
    registry = CollectorRegistry()
    name = str(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"])
    db = psycopg.sql.Identifier(name)
    w = Writer(dsn, metrics=registry, retry_for=1.0)
    try:
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as c:
            c.execute(psycopg.sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(db))
            c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = "
                      "'callvault-writer' AND datname = %s", (name,))  # fmt: skip
        w.write_many(make_calls(5, start=start + timedelta(minutes=1)))
        with pytest.raises(WriterError):
            w.flush()
    finally:
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as c:
            c.execute(psycopg.sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(db))
        with pytest.raises(WriterError):
            w.close()
    got = samples(generate_latest(registry))
    assert value(got, "callvault_writer_failures_total") == 1
    assert value(got, "callvault_writer_connection_failures_total") >= 1
    assert value(got, "callvault_writer_retries_total") == value(got, "callvault_writer_connection_failures_total") - 1


# -- job history ------------------------------------------------------------------------------------------------


def test_history_records_runs_bounded_and_counts_never_decrease(dsn: str, tmp_path: Path) -> None:
    run("init", "--dsn", dsn)
    run("maintain", "--dsn", dsn)
    store = f"file://{tmp_path / 'store'}"
    run("archive", "--dsn", dsn, "--to", store)
    s = Settings(dsn=dsn)
    with pytest.raises(RuntimeError), history.run(s, "prune"):  # what a failing run leaves
        raise RuntimeError("the store said no\nsecond line")
    runs = run_json("history", "--dsn", dsn)
    jobs = [(r["job"], r["outcome"]) for r in runs]
    assert ("maintain", "ok") in jobs and ("archive", "ok") in jobs and ("prune", "failed") in jobs
    assert next(r for r in runs if r["job"] == "prune")["error"] == "the store said no"
    assert run_json("history", "--dsn", dsn, "--outcome", "failed")[0]["job"] == "prune"
    assert all(r["finished_at"] >= r["started_at"] for r in runs)
    m = next(r for r in runs if r["job"] == "maintain")
    assert {"created", "detached", "dropped", "attempts"} <= set(m["counts"])
    assert run_json("history", "--dsn", dsn, "--job", "archive", "--outcome", "ok")[0]["counts"]["archived"] == 0
    assert run_json("history", "--dsn", dsn, "--since", "1h")
    assert run_json("history", "--dsn", dsn, "--since", "2999-01-01T00:00:00Z") == []
    human = run("history", "--dsn", dsn).stdout
    assert "maintain" in human and "ok" in human

    with connect(s, autocommit=True) as conn:  # a run from long ago is deleted when the next one is recorded
        conn.execute("UPDATE callvault.job_history SET started_at = started_at - interval '200 days', "
                     "finished_at = finished_at - interval '200 days' WHERE job = 'maintain'")  # fmt: skip
        before = history.totals(conn, s)
    run("maintain", "--dsn", dsn)
    with connect(s, autocommit=True) as conn:
        kept = history.runs(conn, s, job="maintain")
        after = history.totals(conn, s)
    assert len(kept) == 1 and kept[0].finished_at > datetime.now(UTC) - timedelta(days=1)
    ok_runs = {(j, o): r for j, o, r, _ in after}
    assert ok_runs[("maintain", "ok")] == {(j, o): r for j, o, r, _ in before}[("maintain", "ok")] + 1


def test_init_upgrades_an_install_without_history(dsn: str) -> None:
    """An install from before the job history: `init` adds the tables and the recording pg_cron procedure."""
    run("init", "--dsn", dsn)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("DROP TABLE callvault.job_history, callvault.job_totals")
        body = c.execute("SELECT pg_get_functiondef('callvault.run_maintenance(text)'::regprocedure)").fetchone()
        assert body is not None
        old = str(body[0]).replace("job_history", "maintenance_log_old_no_history")
        c.execute("CREATE OR REPLACE PROCEDURE callvault.run_maintenance(p_parent_table text) LANGUAGE plpgsql AS "
                  "$$ BEGIN PERFORM 1; END $$")  # fmt: skip
        assert "maintenance_log_old_no_history" in old
    run("init", "--dsn", dsn)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CALL callvault.run_maintenance('public.call_logs')")
        assert c.execute("SELECT job, host FROM callvault.job_history").fetchall() == [("maintain", "pg_cron")]


def test_history_bad_input(dsn: str) -> None:
    run("init", "--dsn", dsn)
    for args, words in ((["--job", "vacuum"], "vacuum"), (["--since", "yesterday"], "--since"),
                        (["--limit", "0"], "--limit")):  # fmt: skip
        r = run("history", "--dsn", dsn, *args, ok=False)
        assert r.exit_code == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    with pytest.raises(Exception, match="CALLVAULT_HISTORY_DAYS"):
        history.history_days({"CALLVAULT_HISTORY_DAYS": "soon"})


# -- shipped rules and dashboard --------------------------------------------------------------------------------


@needs_promtool
def test_alert_rules_pass_promtool() -> None:
    for args in (["check", "rules", "callvault-alerts.yml"], ["test", "rules", "callvault-alerts.test.yml"]):
        done = subprocess.run([str(PROMTOOL), *args], cwd=MONITORING, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    rules = yaml.safe_load((MONITORING / "callvault-alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["annotations"].get("runbook") and rule["labels"].get("severity"), rule["alert"]


def exported_names(dsn: str) -> set[str]:
    """Every sample name callvault exports: a real collection, a writer's registry, and a slot."""
    run("init", "--dsn", dsn)
    run("maintain", "--dsn", dsn)  # job series appear once a job ran
    s = Settings(dsn=dsn)
    with connect(s, autocommit=True) as conn:
        snap = metrics.snapshot(conn, s)
    snap.status.worker = {"every_seconds": 60, "cycle_ok": snap.status.now}  # as a worker's heartbeat row
    snap.status.replication_slots = [{"slot": "callvault_mirror_x", "active": True, "lag_bytes": 0,
                                      "wal_retained_bytes": 0, "lag_seconds": 0.0}]  # fmt: skip
    registry = CollectorRegistry()
    with Writer(dsn, metrics=registry):
        pass
    names = {n for n, _ in samples(generate_latest(registry))}
    text = generate_latest(_static(metrics.families(snap)))
    names |= {n for n, _ in samples(text)}
    _, collector = metrics.registry_for(s)
    names |= {m.name for m in collector.collect()}
    collector.close()
    return names


def _static(fams: list[Any]) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(metrics._Static(fams))
    return reg


def test_rules_and_dashboard_name_only_exported_metrics(dsn: str) -> None:
    names = exported_names(dsn)
    sys.path.insert(0, str(MONITORING))
    try:
        import dashboard  # docs/monitoring/dashboard.py
    finally:
        sys.path.remove(str(MONITORING))
    assert (MONITORING / "callvault-dashboard.json").read_text() == dashboard.render(), (
        "docs/monitoring/callvault-dashboard.json is stale: run .venv/bin/python docs/monitoring/dashboard.py"
    )
    board = json.loads((MONITORING / "callvault-dashboard.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    rules = yaml.safe_load((MONITORING / "callvault-alerts.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert len(exprs) > 40
    for expr in exprs:
        used = set(re.findall(r"\bcallvault_[a-z_]+", expr))
        assert used, expr
        assert used <= names, f"{expr}: {used - names} not exported"


# -- a real Prometheus scraping a real worker -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 10) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _wait(what: str, probe: Any, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (OSError, KeyError, IndexError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}: {last!r}")


@pytest.mark.slow
@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus (Debian package) not installed")
def test_prometheus_scrapes_the_worker_and_alerts_fire(dsn: str, tmp_path: Path) -> None:
    run("init", "--dsn", dsn, "--default-partition")
    port, prom_port = _free_port(), _free_port()
    worker_log = (tmp_path / "worker.log").open("w")
    prom_log = (tmp_path / "prometheus.log").open("w")
    worker = subprocess.Popen(
        [str(Path(sys.executable).parent / "callvault"), "worker", "--dsn", dsn, "--every", "1m",
         "--metrics-port", str(port),
         "--metrics-host", "127.0.0.1", "--to", f"file://{tmp_path / 'store'}"],
        stdout=subprocess.DEVNULL, stderr=worker_log,
    )  # fmt: skip
    rules = yaml.safe_load((MONITORING / "callvault-alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["for"] = "0s"  # the shipped rules wait minutes; the test looks at the expressions
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "rules.yml")],
        "scrape_configs": [{"job_name": "callvault", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}],
    }))  # fmt: skip
    prom = subprocess.Popen(
        [str(PROMETHEUS), f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=prom_log,
    )  # fmt: skip
    api = f"http://127.0.0.1:{prom_port}/api/v1"

    def query(expr: str) -> list[dict[str, Any]]:
        _, body = _get(f"{api}/query?query={urllib.parse.quote(expr)}")
        return list(json.loads(body)["data"]["result"])

    def firing() -> set[str]:
        _, body = _get(f"{api}/alerts")
        return {a["labels"]["alertname"] for a in json.loads(body)["data"]["alerts"] if a["state"] == "firing"}

    try:
        t0 = time.perf_counter()
        code, body = _wait("/metrics", lambda: _get(f"http://127.0.0.1:{port}/metrics"))
        assert code == 200 and "callvault_partitions" in body and "python_info" in body, body[:300]
        assert _get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
        served = time.perf_counter() - t0
        _wait("the scrape", lambda: query('callvault_up{job="callvault"} == 1'))
        # the operation label survives Prometheus's own job label (maintenance ran in the worker's first cycle)
        assert _wait("job series", lambda: query('callvault_job_runs_total{operation="maintain",outcome="ok"} >= 1'))
        states = {r["metric"]["state"] for r in _wait("partitions", lambda: query("callvault_partitions > 0"))}
        assert {"past", "current", "future"} <= states
        assert _wait("quarantine series", lambda: query("callvault_quarantine_rows"))
        assert not firing() & {"CallvaultDefaultPartitionRows", "CallvaultTenantIsolationLeak"}

        with psycopg.connect(dsn, autocommit=True) as c:  # break two things
            c.execute("INSERT INTO call_logs (tenant_id, call_id, started_at) VALUES (gen_random_uuid(), "
                      "gen_random_uuid(), '1990-01-01')")  # fmt: skip
            part = a_partition(c, newest=True)
            assert part is not None
            c.execute(psycopg.sql.SQL("GRANT SELECT ON {} TO PUBLIC").format(psycopg.sql.Identifier(part[0])))
            policy = psycopg.sql.SQL("CREATE POLICY wide_open ON {} USING (true)")
            c.execute(policy.format(psycopg.sql.Identifier(part[0])))
        want = {"CallvaultDefaultPartitionRows", "CallvaultTenantIsolationLeak", "CallvaultTenantIsolationDegraded"}
        fired = _wait("alerts", lambda: (lambda f: f if want <= f else None)(firing()))
        assert "CallvaultNoPartitionForNow" not in fired
        code, body = _get(f"http://127.0.0.1:{port}/healthz")
        assert code == 503 and "default partition" in body and "tenant isolation" in body
        print(f"/metrics first answered {served:.2f} s after the worker started")
    finally:
        prom.terminate()
        worker.terminate()
        prom.wait(30)
        code = worker.wait(60)
        worker_log.close()
        prom_log.close()
        assert code == 0, (tmp_path / "worker.log").read_text()[-2000:]
