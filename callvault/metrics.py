"""Prometheus metrics of a managed table: ``callvault metrics`` and ``callvault worker --metrics-port``.

One collection reads what ``callvault status`` reads (pg_partman's config, the partition catalog, the
default partition, the archive journal and log, the job history, the tenant-isolation audit, callvault's
replication slots) plus the quarantine's rows by reason, and turns it into metric families with the
``table`` label. Names follow Prometheus conventions (base units, ``_seconds``, ``_bytes``, ``_total``);
docs/monitoring/README.md lists every one and the alerts built on them.

Collecting is read-only and cheap: a fixed number of statements on the catalog and callvault's own small
tables, whatever the number of partitions (``callvault bench metrics`` measures it at 500), never a scan
of ``call_logs``. Each statement runs on its own (autocommit), so any lock it takes (ACCESS SHARE, to
read a size) is released at once, and under ``lock_timeout = 100ms``: it never waits in a lock queue
in front of a writer for longer than that. When DDL holds a partition longer, that collection fails and
``callvault_up`` says so; the next one succeeds.

The worker serves ``/metrics`` (and ``/healthz``: 200 when ``callvault health`` would pass, 503 with the
problems otherwise) from a thread; a scrape within :data:`CACHE_S` of the last collection is answered
from it, so several scrapers cost one collection.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector
from psycopg import sql

from callvault import catalog, history, monitor, replication_state
from callvault.config import META_SCHEMA, Settings
from callvault.db import Conn, connect
from callvault.errors import InvalidSetting
from callvault.ingest import reasons

LOCK_TIMEOUT_MS = 100  # the longest a collection waits for any lock
STATEMENT_TIMEOUT_MS = 5_000
CACHE_S = 5.0  # scrapes this soon after a collection are answered from it
STALE_S = 60.0  # the last good values are served this long after a collection starts failing, then dropped
STATES = ("past", "current", "future", "default")
SEVERITIES = ("leak", "error", "warning")
STEPS = ("detached", "exported", "uploaded", "verified", "dropped")


@dataclass
class Snapshot:
    """One collection: the status, the extra metric facts, when and how long it took."""

    status: monitor.Status
    quarantine: dict[str, int]
    quarantine_oldest: datetime | None
    jobs: dict[str, dict[str, Any]]
    totals: list[tuple[str, str, int, dict[str, Any]]]
    steps: dict[str, tuple[int, float]]
    seconds: float = 0.0
    statements: int = 0
    collected_at: float = field(default_factory=time.time)


def _quarantine(conn: Conn, settings: Settings) -> tuple[dict[str, int], datetime | None]:
    counts = dict.fromkeys(reasons.CODES, 0)
    if not catalog.meta_table_exists(conn, "quarantine"):
        return counts, None
    reason = sql.Identifier("reason")
    rows = conn.execute(
        sql.SQL("SELECT {}, count(*), min(received_at) FROM {} WHERE target_table = %s GROUP BY 1").format(
            reasons.sql_case(reason), sql.Identifier(META_SCHEMA, "quarantine")
        ),
        (settings.qualified,),
    ).fetchall()
    oldest = [r[2] for r in rows if r[2] is not None]
    for code, n, _ in rows:
        counts[str(code)] = counts.get(str(code), 0) + int(n)
    return counts, min(oldest) if oldest else None


def _steps(conn: Conn, settings: Settings) -> dict[str, tuple[int, float]]:
    if not catalog.meta_table_exists(conn, "archive_log"):
        return {}
    rows = conn.execute(
        sql.SQL(
            "SELECT step, count(*), coalesce(sum(seconds), 0)::float8 FROM {} WHERE parent_table = %s GROUP BY 1"
        ).format(sql.Identifier(META_SCHEMA, "archive_log")),
        (settings.qualified,),
    ).fetchall()
    return {str(s): (int(n), float(secs)) for s, n, secs in rows}


class _Counting:
    """Counts the statements a collection runs (for ``bench metrics``)."""

    def __init__(self, conn: Conn) -> None:
        self.n = 0
        self._conn = conn
        self._execute = conn.execute

        def execute(*args: Any, **kwargs: Any) -> Any:
            self.n += 1
            return self._execute(*args, **kwargs)

        conn.execute = execute  # type: ignore[method-assign]

    def close(self) -> None:
        del self._conn.execute


def snapshot(conn: Conn, settings: Settings) -> Snapshot:
    """Collect once on ``conn`` (autocommit; read only). Sets the lock and statement timeouts on it.

    :raises NotInitialised: the table is not managed by callvault here (exit code 66).
    :raises psycopg.errors.LockNotAvailable: DDL held a lock the collection needed for over 100 ms."""
    t0 = time.perf_counter()
    conn.execute("SELECT set_config('lock_timeout', %s, false), set_config('statement_timeout', %s, false)",
                 (f"{LOCK_TIMEOUT_MS}ms", f"{STATEMENT_TIMEOUT_MS}ms"))  # fmt: skip
    counting = _Counting(conn)
    try:
        status = monitor.collect(conn, settings)
        quarantine, oldest = _quarantine(conn, settings)
        snap = Snapshot(
            status=status,
            quarantine=quarantine,
            quarantine_oldest=oldest,
            jobs=history.latest(conn, settings),
            totals=history.totals(conn, settings),
            steps=_steps(conn, settings),
        )
    finally:
        counting.close()
    snap.statements = counting.n
    snap.seconds = time.perf_counter() - t0
    return snap


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def families(snap: Snapshot) -> list[Metric]:
    """The snapshot as Prometheus metric families (pure)."""
    st = snap.status
    table = st.table
    now = st.now.timestamp()
    out: list[Metric] = []

    def sample(kind: type[GaugeMetricFamily | CounterMetricFamily], name: str, doc: str, value: float | None,
               labels: dict[str, str]) -> None:  # fmt: skip
        if value is None:
            return
        fam = next((m for m in out if m.name == name), None)
        if fam is None:
            fam = kind(name, doc, labels=["table", *labels])
            out.append(fam)
        assert isinstance(fam, kind)
        fam.add_metric([table, *labels.values()], float(value))

    def gauge(name: str, doc: str, value: float | None, **labels: str) -> None:
        sample(GaugeMetricFamily, name, doc, value, labels)

    def counter(name: str, doc: str, value: float, **labels: str) -> None:
        sample(CounterMetricFamily, name, doc, value, labels)

    # lifecycle
    for state in STATES:
        gauge("callvault_partitions", "Attached partitions by state (past, current, future, default).",
              sum(1 for p in st.partitions if p.state == state), state=state)  # fmt: skip
    gauge("callvault_table_bytes", "Size on disk of the attached partitions (with indexes and TOAST).", st.total_bytes)
    gauge("callvault_table_rows_estimate", "The planner's row estimate of the attached partitions.",
          st.total_rows_estimate)  # fmt: skip
    horizon = st.premake_horizon
    gauge("callvault_premake_horizon_seconds",
          "Seconds from now to the end of the newest partition (negative: calls starting now have no partition).",
          horizon.timestamp() - now if horizon else 0.0)  # fmt: skip
    lc = st.config
    need = lc.interval.add(lc.interval.floor(st.now), monitor.MIN_INTERVALS_AHEAD)
    gauge("callvault_premake_horizon_min_seconds", "The horizon `callvault health` requires, in seconds ahead of now.",
          need.timestamp() - now)  # fmt: skip
    gauge("callvault_default_partition_rows", "Rows in the default partition (they block maintenance).",
          st.default_rows)  # fmt: skip
    oldest = st.oldest
    gauge("callvault_oldest_partition_age_seconds", "Seconds since the start of the oldest attached partition.",
          now - oldest.timestamp() if oldest else None)  # fmt: skip
    cutoff = st.retention_cutoff
    if cutoff is not None:
        gauge("callvault_retention_seconds", "The retention period (now minus the retention cutoff).",
              now - cutoff.timestamp())  # fmt: skip
        late = [p for p in st.ranged if p.end is not None and p.end < cutoff - monitor.RETENTION_GRACE]
        gauge("callvault_partitions_past_retention",
              "Attached partitions that ended more than a day before the retention cutoff (retention is behind).",
              len(late))  # fmt: skip
    srv = st.server  # HA: which node this is, its timeline and promotion, its standbys
    if srv:
        gauge("callvault_server_in_recovery", "1 when the server read is a standby (in recovery), 0 on a primary.",
              1.0 if srv.get("in_recovery") else 0.0)  # fmt: skip
        tl = srv.get("timeline")
        gauge("callvault_server_timeline", "The server's timeline (each promotion starts a new one).",
              float(tl) if isinstance(tl, int) else None)  # fmt: skip
        promoted = srv.get("promoted_at")
        gauge("callvault_server_promoted_timestamp_seconds",
              "When the server's timeline began: its last promotion (failover or switchover).",
              promoted.timestamp() if isinstance(promoted, datetime) else None)  # fmt: skip
        standbys = srv.get("standbys") if isinstance(srv.get("standbys"), list) else []
        assert isinstance(standbys, list)
        for sync_state in ("sync", "quorum", "async", "potential"):
            gauge("callvault_server_standbys", "Standbys streaming from this server, by sync_state.",
                  sum(1 for x in standbys if x.get("sync_state") == sync_state), sync_state=sync_state)  # fmt: skip
        for x in standbys:
            gauge("callvault_server_standby_replay_lag_seconds", "A standby's replay lag (0 when caught up).",
                  float(x.get("replay_lag_s") or 0.0), standby=str(x.get("name")))  # fmt: skip
    gauge("callvault_partition_gaps", "Holes between partitions: writes into them are quarantined.", len(st.gaps))
    gauge("callvault_pending_detach_partitions", "Partitions whose DETACH CONCURRENTLY was interrupted.",
          len(st.detach_pending))  # fmt: skip
    gauge("callvault_health_problems", "Problems `callvault health` reports (0: healthy).", len(st.problems))
    if st.worker is not None:
        gauge("callvault_worker_every_seconds", "The worker's period.", float(str(st.worker["every_seconds"])))
        ok = st.worker.get("cycle_ok")
        gauge("callvault_worker_last_good_cycle_timestamp_seconds", "When the worker last completed a good cycle.",
              _ts(ok) if isinstance(ok, datetime) else 0.0)  # fmt: skip

    # jobs (maintain, archive, prune)
    for job in history.JOBS:
        for outcome in history.OUTCOMES:
            runs = next((r for j, o, r, _ in snap.totals if j == job and o == outcome), 0)
            counter("callvault_job_runs", "Runs of each job (operation: maintain, archive, prune) by outcome.", runs,
                    operation=job, outcome=outcome)  # fmt: skip
        last = snap.jobs.get(job)
        if last is None:
            continue
        gauge("callvault_job_last_run_timestamp_seconds", "When the job's last run finished.",
              _ts(last["finished_at"]), operation=job)  # fmt: skip
        gauge("callvault_job_last_run_ok", "1 when the job's last run succeeded, 0 when it failed or was blocked.",
              1.0 if last["outcome"] == "ok" else 0.0, operation=job)  # fmt: skip
        gauge(
            "callvault_job_last_run_duration_seconds",
            "How long the job's last run took.",
            last["seconds"],
            operation=job,
        )
        gauge("callvault_job_last_success_timestamp_seconds", "When the job last succeeded (0: not in the history).",
              _ts(last["last_ok"]) or 0.0, operation=job)  # fmt: skip
    m = snap.jobs.get("maintain")
    if m is not None:
        for what in ("created", "detached", "dropped"):
            gauge(f"callvault_maintenance_last_{what}_partitions", f"Partitions the last maintenance run {what}.",
                  float(m["counts"].get(what, 0)))  # fmt: skip

    # archive
    due = [p for p in st.ranged if cutoff is not None and p.end is not None and p.end <= cutoff]
    stuck = [r for r in st.archive_pending if r.get("error")]
    for stage, n in (("due", len(due)), ("detached", len(st.detached)), ("in_progress", len(st.archive_pending)),
                     ("stuck", len(stuck))):  # fmt: skip
        gauge("callvault_archive_backlog_partitions",
              "Partitions waiting for the archive: due (past retention, attached), detached, in progress, stuck "
              "(the last attempt failed).", n, stage=stage)  # fmt: skip
    gauge("callvault_archive_backlog_bytes", "Bytes of the partitions due or detached, waiting for the archive.",
          sum(p.bytes for p in due) + sum(b for _, b in st.detached))  # fmt: skip
    summed: dict[str, float] = {}
    for job, _, _, counts in snap.totals:
        for k, v in counts.items():
            summed[f"{job}.{k}"] = summed.get(f"{job}.{k}", 0) + float(v)
    counter(
        "callvault_archived_partitions", "Partitions archived, verified and dropped.", summed.get("archive.archived", 0)
    )
    counter("callvault_archived_rows", "Rows in the partitions archived.", summed.get("archive.rows", 0))
    counter("callvault_archived_bytes", "Bytes written to the store for the partitions archived.",
            summed.get("archive.bytes", 0))  # fmt: skip
    counter("callvault_archive_verify_failures", "Archive runs' partitions whose read-back did not match.",
            snap.steps.get("verify-failed", (0, 0.0))[0])  # fmt: skip
    counter("callvault_archive_pruned_objects", "Archived objects deleted by archive retention (prune).",
            summed.get("prune.objects", 0))  # fmt: skip
    steps = SummaryMetricFamily("callvault_archive_step_seconds", "Time the archive spent in each step.",
                                labels=["table", "step"])  # fmt: skip
    for step in STEPS:
        n, secs = snap.steps.get(step, (0, 0.0))
        steps.add_metric([table, step], count_value=n, sum_value=secs)
    out.append(steps)

    # tenancy and quarantine
    for sev in SEVERITIES:
        gauge("callvault_isolation_problems", "Tenant-isolation findings of `callvault audit`, by severity.",
              st.isolation_findings.get(sev, 0), severity=sev)  # fmt: skip
    for code in reasons.CODES:
        gauge("callvault_quarantine_rows", "Rows waiting in callvault.quarantine, by reason.",
              snap.quarantine.get(code, 0), reason=code)  # fmt: skip
    gauge("callvault_quarantine_oldest_age_seconds", "Age of the oldest row waiting in the quarantine.",
          now - snap.quarantine_oldest.timestamp() if snap.quarantine_oldest else 0.0)  # fmt: skip

    # replication
    gauge("callvault_replication_slot_wal_limit_bytes", "WAL a callvault slot may retain before health fails.",
          replication_state.slot_wal_limit())  # fmt: skip
    for s in st.replication_slots:
        slot = str(s["slot"])
        gauge("callvault_replication_slot_active", "1 when the slot's subscriber is connected.",
              1.0 if s.get("active") else 0.0, slot=slot)  # fmt: skip
        gauge("callvault_replication_slot_wal_retained_bytes", "WAL the slot holds back on the primary.",
              _num(s.get("wal_retained_bytes")), slot=slot)  # fmt: skip
        gauge("callvault_replication_lag_bytes", "WAL the subscriber has not confirmed yet.",
              _num(s.get("lag_bytes")), slot=slot)  # fmt: skip
        gauge("callvault_replication_lag_seconds", "Replication lag reported by the walsender.",
              _num(s.get("lag_seconds")), slot=slot)  # fmt: skip
    return out


def _num(value: object) -> float | None:
    return float(str(value)) if value is not None else None


class TableCollector(Collector):
    """A ``prometheus_client`` collector of one table's metrics: collects on scrape (at most once per
    :data:`CACHE_S`), on its own connection, and reports its own success, age and cost."""

    def __init__(self, settings: Settings, cache_s: float = CACHE_S) -> None:
        self.settings = settings
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._conn: Conn | None = None
        self._families: list[Metric] = []
        self._snapshot: Snapshot | None = None
        self._last_ok: float | None = None
        self._ok = False
        self._error: str | None = None
        self._attempted = 0.0
        self._seconds = 0.0

    def refresh(self, force: bool = False) -> bool:
        """Collect now unless the last one is fresh; True when the metrics are from a good collection.

        A scrape that arrives while another collects is answered from the last collection at once
        (``force`` waits for it)."""
        if not self._lock.acquire(blocking=force):
            return self._ok
        try:
            return self._refresh(force)
        finally:
            self._lock.release()

    def _refresh(self, force: bool) -> bool:
        if not force and time.monotonic() - self._attempted < self.cache_s:
            return self._ok
        self._attempted = time.monotonic()
        t0 = time.perf_counter()
        try:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = connect(self.settings.with_(start_embedded=False), autocommit=True)
                self._conn.execute("SET application_name = 'callvault-metrics'")
            snap = snapshot(self._conn, self.settings)
            self._families, self._snapshot = families(snap), snap
            self._ok, self._error, self._last_ok = True, None, time.time()
        except Exception as exc:  # a scrape always answers: the failure is callvault_up 0 and /healthz's text
            self._ok, self._error = False, str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            if self._conn is not None and (self._conn.broken or self._conn.closed):
                self._conn = None
            if self._last_ok is None or time.time() - self._last_ok > STALE_S:
                self._families = []  # values relative to "now" would freeze: serve none rather than old ones
        self._seconds = time.perf_counter() - t0
        return self._ok

    @property
    def problems(self) -> list[str]:
        """What ``/healthz`` reports: the health problems of the last good collection, or why collecting failed."""
        if not self._ok:
            return [f"metrics collection failed: {self._error}"]
        return list(self._snapshot.status.problems) if self._snapshot else []

    def describe(self) -> Iterable[Metric]:
        """Nothing: registering the collector (e.g. on ``prometheus_client.REGISTRY``) must not query the
        database; its families depend on what the table holds."""
        return []

    def collect(self) -> Iterable[Metric]:
        """The families of a scrape: ``callvault_up``, the collection's cost and age, and the table's metrics
        (from this collection, or the last good one when it failed)."""
        self.refresh()
        table = self.settings.qualified
        up = GaugeMetricFamily("callvault_up", "1 when the last collection of the table's metrics succeeded.",
                               labels=["table"])  # fmt: skip
        up.add_metric([table], 1.0 if self._ok else 0.0)
        yield up
        took = GaugeMetricFamily("callvault_metrics_collect_duration_seconds", "How long the last collection took.",
                                 labels=["table"])  # fmt: skip
        took.add_metric([table], self._seconds)
        yield took
        if self._last_ok is not None:
            last = GaugeMetricFamily("callvault_metrics_last_success_timestamp_seconds",
                                     "When the metrics were last collected.", labels=["table"])  # fmt: skip
            last.add_metric([table], self._last_ok)
            yield last
        yield from self._families  # the last good collection's, when this one failed

    def close(self) -> None:
        """Close the collector's connection."""
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None


def registry_for(settings: Settings) -> tuple[CollectorRegistry, TableCollector]:
    """A registry holding the table's collector (and nothing of the process)."""
    registry = CollectorRegistry(auto_describe=False)
    collector = TableCollector(settings)
    registry.register(collector)
    return registry, collector


def render(settings: Settings) -> bytes:
    """The table's metrics once, in the Prometheus text format (``callvault metrics``).

    :raises CallvaultError: collecting failed (the error of the collection, e.g. NotInitialised)."""
    with connect(settings, autocommit=True) as conn:
        snap = snapshot(conn, settings)
    return generate_latest(_static([*_up(settings.qualified, True), *families(snap)]))


def samples_json(text: bytes) -> list[dict[str, object]]:
    """A text exposition as ``[{"name", "labels", "value"}]`` (``callvault metrics --json``)."""
    from prometheus_client.parser import text_string_to_metric_families

    return [
        {"name": smp.name, "labels": dict(smp.labels), "value": smp.value}
        for fam in text_string_to_metric_families(text.decode())
        for smp in fam.samples
    ]


def write_textfile(settings: Settings, path: Path) -> None:
    """Write the metrics for node_exporter's textfile collector: atomically (temporary file + rename).

    :raises InvalidSetting: the path does not end in ``.prom`` or its directory does not exist (exit 2)."""
    if path.suffix != ".prom":
        raise InvalidSetting(f"--textfile {path}: node_exporter's textfile collector reads only *.prom files")
    if not path.parent.is_dir():
        raise InvalidSetting(f"--textfile {path}: directory {path.parent} does not exist; create it first")
    try:
        with connect(settings, autocommit=True) as conn:
            snap = snapshot(conn, settings)
    except Exception:
        # node_exporter would go on serving the last file (up 1, old values): replace it with up 0
        write_to_textfile(str(path), _static(_up(settings.qualified, False)))
        raise
    write_to_textfile(str(path), _static([*_up(settings.qualified, True), *families(snap)]))


def _up(table: str, ok: bool) -> list[Metric]:
    up = GaugeMetricFamily("callvault_up", "1 when the last collection of the table's metrics succeeded.",
                           labels=["table"])  # fmt: skip
    up.add_metric([table], 1.0 if ok else 0.0)
    out: list[Metric] = [up]
    if ok:
        last = GaugeMetricFamily("callvault_metrics_last_success_timestamp_seconds",
                                 "When the metrics were last collected.", labels=["table"])  # fmt: skip
        last.add_metric([table], time.time())
        out.append(last)
    return out


def _static(fams: list[Metric]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Static(fams))
    return registry


class _Static(Collector):
    def __init__(self, fams: list[Metric]) -> None:
        self._fams = fams

    def collect(self) -> Iterator[Metric]:
        yield from self._fams


class MetricsServer:
    """``/metrics`` and ``/healthz`` on ``host:port`` from a daemon thread (the worker's ``--metrics-port``).

    ``/metrics`` holds the table's metrics and, with ``include_process``, the process's own registry
    (``prometheus_client.REGISTRY``: Python and process metrics, writers in the same process)."""

    def __init__(self, settings: Settings, port: int, host: str = "", *, include_process: bool = True) -> None:
        from prometheus_client import REGISTRY

        self.registry, self.collector = registry_for(settings)
        registries = [self.registry, REGISTRY] if include_process else [self.registry]
        collector = self.collector

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path in ("/metrics", "/"):
                    body = b"".join(generate_latest(r) for r in registries)
                    self._send(200, body, "text/plain; version=0.0.4; charset=utf-8")
                elif path == "/healthz":
                    collector.refresh()
                    problems = collector.problems
                    text = "ok\n" if not problems else "".join(f"{p}\n" for p in problems)
                    self._send(503 if problems else 200, text.encode(), "text/plain; charset=utf-8")
                else:
                    self._send(404, b"not found: try /metrics or /healthz\n", "text/plain; charset=utf-8")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the worker's log is JSON lines; scrapes are not events

        try:
            self.httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise InvalidSetting(
                f"--metrics-port {port}: cannot listen ({exc.strerror or exc}); choose a free port"
            ) from None
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="callvault-metrics", daemon=True)

    def start(self) -> MetricsServer:
        """Collect once, then serve."""
        self.collector.refresh(force=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the connection."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.collector.close()
