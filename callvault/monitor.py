"""``status`` and ``health``: the partition-size query made readable, and checks with exit codes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

from callvault import catalog, db, embedded, partman, tenancy
from callvault.archive.journal import journal_rows
from callvault.config import META_SCHEMA, Settings
from callvault.db import Conn
from callvault.errors import EmbeddedError, NotInitialised
from callvault.history import last_run
from callvault.maintain import current_plan
from callvault.plan import LifecycleConfig, PartitionInfo
from callvault.replication_state import (
    mirror_table_problems,
    server_notes,
    server_problems,
    slot_problems,
    slot_wal_limit,
    slotless_problems,
    sync_slot_problems,
)
from callvault.tenancy.audit import ERROR, LEAK, WARNING

# health: the premake horizon must reach at least this many intervals past now. With premake 4 and
# maintenance every 15 min it is >= 4; 2 means maintenance has not run for ~2 intervals.
MIN_INTERVALS_AHEAD = 2
# health: a partition past retention may linger this long (maintenance runs every 15 min) before
# retention counts as behind.
RETENTION_GRACE = timedelta(days=1)
# health: a worker whose last good cycle is older than this many periods (+ slack) is failing.
WORKER_STALE_PERIODS = 3
WORKER_SLACK = timedelta(minutes=5)


@dataclass(frozen=True)
class PartitionStatus:
    """One partition in ``callvault status``: its bounds (``None`` for a default partition), the
    planner's row estimate, its size on disk, and where it sits relative to now (``state``: ``past``,
    ``current``, ``future`` or ``default``)."""

    name: str
    start: datetime | None
    end: datetime | None
    rows_estimate: int | None
    bytes: int
    state: str  # past | current | future | default

    def to_dict(self) -> dict[str, object]:
        """The partition as JSON-ready values (``from``/``to`` in ISO 8601)."""
        return {
            "name": self.name, "from": _iso(self.start), "to": _iso(self.end),
            "rows_estimate": self.rows_estimate, "bytes": self.bytes, "state": self.state,
        }  # fmt: skip


@dataclass
class Status:
    """Everything ``callvault status`` shows for one table, read at ``now`` (the server's clock):
    pg_partman's lifecycle config, the attached partitions, rows in a default partition, detached
    partitions awaiting the archive, the last maintenance run, the archive journal, interrupted detaches,
    the worker's heartbeat, tenant-isolation leaks, the planner's gaps and expected horizon, and the
    health verdicts (``problems``: one line each, with the fix; empty when healthy)."""

    table: str
    now: datetime
    partman_version: str
    config: LifecycleConfig
    partitions: list[PartitionStatus]
    default_rows: int
    detached: list[tuple[str, int]]
    last_maintenance: datetime | None
    partition_warn: int
    archive_pending: list[dict[str, object]] = field(default_factory=list)  # journal rows not yet dropped
    detach_pending: list[str] = field(default_factory=list)  # interrupted DETACH ... CONCURRENTLY
    worker: dict[str, object] | None = None  # the worker's heartbeat row, when a worker ever ran
    isolation_leaks: list[str] = field(default_factory=list)  # `callvault audit` LEAK findings
    isolation_findings: dict[str, int] = field(default_factory=dict)  # audit findings by severity
    # the embedded server runs binaries older than the installed ones (a package upgrade under it)
    server_restart: str | None = None
    # the planner at `now`: holes between partitions (writes into them fail) and where maintenance
    # (pg_partman's own rule) will take the horizon
    gaps: list[tuple[datetime, datetime]] = field(default_factory=list)
    expected_horizon: datetime | None = None
    # callvault's replication slots here (`callvault mirror`): lag and WAL retained
    replication_slots: list[dict[str, object]] = field(default_factory=list)
    # tablesync slots here (a subscription's initial copy of a table; callvault's mirror when known) and,
    # on a mirror's target, the tables of its callvault subscriptions with their pg_subscription_rel state
    tablesync_slots: list[dict[str, object]] = field(default_factory=list)
    mirror_tables: list[dict[str, object]] = field(default_factory=list)
    # part_config.datetime_string (how pg_partman names the partitions) and retention_keep_table
    partman_naming: str | None = None
    partman_keeps_tables: bool = True
    # the server read (HA: which node): primary or standby, timeline, when it was promoted, its standbys
    server: dict[str, object] = field(default_factory=dict)
    mirrors_without_slot: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth acting on, not unhealthy (status prints them)

    @property
    def ranged(self) -> list[PartitionStatus]:
        """The partitions with a range (every one but a default partition)."""
        return [p for p in self.partitions if p.state != "default"]

    @property
    def premake_horizon(self) -> datetime | None:
        """The end of the newest partition: rows starting before it have somewhere to go."""
        ends = [p.end for p in self.ranged if p.end is not None]
        return max(ends) if ends else None

    @property
    def oldest(self) -> datetime | None:
        """The start of the oldest ranged partition, or ``None`` when there is none."""
        starts = [p.start for p in self.ranged if p.start is not None]
        return min(starts) if starts else None

    @property
    def retention_cutoff(self) -> datetime | None:
        """``now - retention``: partitions ending before it are due to be retired (``None``: kept forever)."""
        return self.config.retention.cutoff(self.now) if self.config.retention else None

    @property
    def total_bytes(self) -> int:
        """The size on disk of all attached partitions."""
        return sum(p.bytes for p in self.partitions)

    @property
    def total_rows_estimate(self) -> int:
        """The planner's row estimates of all attached partitions, summed (unknown counts as 0)."""
        return sum(p.rows_estimate or 0 for p in self.partitions)

    def to_dict(self) -> dict[str, object]:
        """The status as JSON-ready values (``callvault status --json``), with ``healthy`` and ``problems``."""
        return {
            "table": self.table,
            "now": _iso(self.now),
            "partman_version": self.partman_version,
            "partman_naming": self.partman_naming,
            "partman_keeps_tables": self.partman_keeps_tables,
            "notes": self.notes,
            "interval": str(self.config.interval),
            "premake": self.config.premake,
            "retention": str(self.config.retention) if self.config.retention else None,
            "partitions": [p.to_dict() for p in self.partitions],
            "partition_count": len(self.partitions),
            "premake_horizon": _iso(self.premake_horizon),
            "expected_horizon": _iso(self.expected_horizon),
            "gaps": [{"from": _iso(a), "to": _iso(b)} for a, b in self.gaps],
            "oldest_partition_start": _iso(self.oldest),
            "retention_cutoff": _iso(self.retention_cutoff),
            "default_rows": self.default_rows,
            "detached_awaiting_archive": [{"name": n, "bytes": b} for n, b in self.detached],
            "total_bytes": self.total_bytes,
            "total_rows_estimate": self.total_rows_estimate,
            "last_maintenance": _iso(self.last_maintenance),
            "archive_in_progress": self.archive_pending,
            "detach_pending": self.detach_pending,
            "worker": {k: (_iso(v) if isinstance(v, datetime) else v) for k, v in self.worker.items()}
            if self.worker
            else None,
            "replication_slots": self.replication_slots,
            "server": {k: (_iso(v) if isinstance(v, datetime) else v) for k, v in self.server.items()},
            "tablesync_slots": self.tablesync_slots,
            "mirror_tables": self.mirror_tables,
            "mirrors_without_slot": self.mirrors_without_slot,
            "healthy": not self.problems,
            "problems": self.problems,
        }


def _iso(ts: datetime | None) -> str | None:
    return ts.astimezone(UTC).isoformat() if ts else None


def classify(info: PartitionInfo, now: datetime) -> str:
    """``default``, ``past`` (ends at or before ``now``), ``future`` (starts after it) or ``current``."""
    if info.is_default:
        return "default"
    if info.end is not None and info.end <= now:
        return "past"
    if info.start is not None and info.start > now:
        return "future"
    return "current"


def _last_maintenance(conn: Conn, settings: Settings) -> datetime | None:
    """When maintenance last ran (ok, or blocked: it premade partitions), from the one run history."""
    if not catalog.meta_table_exists(conn, "job_history"):
        return None
    query = sql.SQL(
        "SELECT max(finished_at) FROM {} WHERE parent_table = %s AND job = 'maintain' AND outcome <> 'failed'"
    ).format(sql.Identifier(META_SCHEMA, "job_history"))
    row = conn.execute(query, (settings.qualified,)).fetchone()
    return row[0] if row else None


def collect(conn: Conn, settings: Settings, now: datetime | None = None) -> Status:
    """Read the table's status on ``conn`` and judge its health (read only; ``callvault status`` and
    ``health``).

    :param now: the moment to judge at; default the database server's clock.
    :raises NotInitialised: pg_partman is not installed or does not manage the table (exit code 66).
    :raises EmbeddedError: reading failed on an embedded Postgres that runs older binaries than the
        installed ones and needs a restart (exit code 70).

    Example:

        with connect(settings) as conn:
            status = collect(conn, settings)
        print(status.premake_horizon, status.problems)
    """
    restart = embedded.restart_needed(conn)
    if restart is None:
        return _collect(conn, settings, now)
    try:
        status = _collect(conn, settings, now)
    except psycopg.Error as exc:  # e.g. "undefined symbol": new extension libraries, old server
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EmbeddedError(
            f"status of {settings.qualified} failed ({reason}) on the embedded Postgres at "
            f"{embedded.Cluster().home}, which is {restart}"
        ) from exc
    status.server_restart = restart
    status.problems = problems(status)
    return status


def _collect(conn: Conn, settings: Settings, now: datetime | None = None) -> Status:
    now = now or db.server_now(conn)
    pm = partman.installed(conn)
    config = partman.read_config(conn, settings, pm) if pm else None
    if pm is None or config is None:
        raise NotInitialised(f"{settings.qualified} is not managed by callvault here: run `callvault init` first")
    rows = catalog.list_partitions(conn, settings)
    status = Status(
        table=settings.qualified,
        now=now,
        partman_version=pm.version,
        config=config,
        partitions=[
            PartitionStatus(r.info.name, r.info.start, r.info.end, r.info.rows_estimate, r.bytes, classify(r.info, now))
            for r in rows
        ],
        default_rows=catalog.default_rows(conn, settings),
        detached=catalog.list_detached(conn, settings),
        last_maintenance=_last_maintenance(conn, settings),
        partition_warn=settings.partition_warn,
        archive_pending=[r for r in journal_rows(conn, settings) if r["step"] != "dropped"],
        detach_pending=catalog.pending_detach(conn, settings),
        worker=last_run(conn, settings),
    )
    findings = tenancy.audit(conn, settings).findings
    status.isolation_leaks = [f.problem for f in findings if f.severity == LEAK]
    status.isolation_findings = {sev: sum(1 for f in findings if f.severity == sev) for sev in (LEAK, ERROR, WARNING)}
    from callvault.replication_state import records, server, slotless_mirrors, slots, subscription_tables, sync_slots

    status.server = server(conn)
    status.replication_slots = [s.to_dict() for s in slots(conn)]
    status.tablesync_slots = [s.to_dict() for s in sync_slots(conn, records(conn))]
    status.mirror_tables = subscription_tables(conn)
    status.mirrors_without_slot = slotless_mirrors(conn)
    plan = current_plan(conn, settings, pm, now)
    status.gaps = [(r.start, r.end) for r in plan.gaps]
    status.expected_horizon = plan.horizon_after
    reg = partman.read_registration(conn, settings, pm)
    if reg is not None:
        status.partman_naming, status.partman_keeps_tables = reg.datetime_string, reg.retention_keep_table
    status.notes = partman_notes(status) + server_notes(status.server, now)
    status.problems = problems(status)
    return status


def partman_notes(status: Status) -> list[str]:
    """pg_partman settings worth acting on that do not make the table unhealthy (pure): ISO week names
    before the update to 5.x, and a retention that drops instead of detaching."""
    from callvault.renaming import needs_migration

    out = []
    if int(status.partman_version.split(".")[0]) < 5 and needs_migration(status.partman_naming):
        out += [
            f"{status.table} uses ISO week names (datetime_string {status.partman_naming}), which pg_partman 5.x "
            "refuses to maintain: run `callvault migrate-names` before (or right after) updating the extension"
        ]
    if not status.partman_keeps_tables and status.config.retention is not None and not status.mirror_tables:
        # (a mirror's target drops its own expired weeks on purpose: the primary archives them)
        out += [
            f"pg_partman's retention_keep_table is false for {status.table}: its retention drops expired "
            "partitions without archiving them; set it true (UPDATE part_config SET retention_keep_table = true) "
            "to have callvault archive them before anything is dropped"
        ]
    return out


def partman_problems(status: Status) -> list[str]:
    """What in pg_partman's own settings of the table breaks callvault's lifecycle (pure): reported,
    never changed behind the operator's back."""
    from callvault.renaming import needs_migration

    out = []
    major = int(status.partman_version.split(".")[0])
    if needs_migration(status.partman_naming) and major >= 5:
        out.append(
            f"pg_partman {status.partman_version} cannot maintain {status.table}: its partitions use pg_partman "
            f"4.x's ISO week names (datetime_string {status.partman_naming}), unsupported since 5.0, so no "
            "partition is premade; run `callvault migrate-names` (renames them under the lock budget while "
            "writes continue)"
        )
    return out


def problems(status: Status) -> list[str]:
    """Health verdicts, each a one-line reason with the fix (pure)."""
    out = partman_problems(status)
    if status.server_restart:
        out.append(f"the embedded Postgres is {status.server_restart}")
    lc = status.config
    need = lc.interval.add(lc.interval.floor(status.now), MIN_INTERVALS_AHEAD)
    horizon = status.premake_horizon
    if horizon is None or horizon < need:
        out.append(
            f"premake horizon {_iso(horizon)} is short of {_iso(need)}: maintenance is not running "
            "(run `callvault maintain`, then schedule it)"
        )
    covering = [p for p in status.ranged if p.start is not None and p.end is not None and p.start <= status.now < p.end]
    if status.ranged and not covering:
        out.append(
            f"no partition holds {_iso(status.now)}: calls starting now are refused (quarantined by the writer); "
            "run `callvault maintain`"
        )
    if status.gaps:
        (a, _), (_, b) = status.gaps[0], status.gaps[-1]
        out.append(
            f"{len(status.gaps)} partition gap(s) between {_iso(a)} and {_iso(b)}: writes into them are refused "
            "(quarantined by the writer); `callvault maintain` creates them (pg_partman alone never does)"
        )
    if status.default_rows:
        out.append(
            f"default partition holds {status.default_rows} rows: they block maintenance; move them to their partitions"
        )
    cutoff = status.retention_cutoff
    if cutoff is not None:
        late = [p.name for p in status.ranged if p.end is not None and p.end < cutoff - RETENTION_GRACE]
        if late:
            out.append(f"retention is behind: {len(late)} partition(s) past retention still attached ({late[0]}...)")
    if status.detach_pending:
        out.append(
            f"detach of {status.detach_pending[0]} was interrupted (pending detach): retention cannot run until it "
            "is finished; `callvault maintain` or `callvault archive` finishes it once no session holds a lock on it"
        )
    for row in status.archive_pending:
        if row.get("error"):
            out.append(
                f"archive of {row['partition']} stuck at step {row['step']} after {row['attempts']} attempt(s): "
                f"{row['error']} (the table is kept; fix the cause and run `callvault archive`)"
            )
    w = status.worker
    if w is not None:
        every = timedelta(seconds=int(str(w["every_seconds"])))
        last_ok = w.get("cycle_ok")
        if not isinstance(last_ok, datetime) or status.now - last_ok > WORKER_STALE_PERIODS * every + WORKER_SLACK:
            since = _iso(last_ok) if isinstance(last_ok, datetime) else "it started"
            error = f"; last error: {w['last_error']}" if w.get("last_error") else ""
            out.append(
                f"worker on {w['host']} (pid {w['pid']}) has not completed a good cycle since {since} "
                f"(every {every}): check its log{error}"
            )
    out += [f"tenant isolation: {leak} (details: `callvault audit`)" for leak in status.isolation_leaks]
    limit = slot_wal_limit()
    out += slot_problems(status.replication_slots, limit)
    out += sync_slot_problems(status.tablesync_slots, limit)
    out += mirror_table_problems(status.mirror_tables, "this database")
    out += server_problems(status.server)
    out += slotless_problems(status.mirrors_without_slot)
    if len(status.partitions) > status.partition_warn:
        out.append(
            f"{len(status.partitions)} partitions exceed the warning threshold {status.partition_warn} "
            "(planning slows past ~10k): use a coarser interval or shorter retention"
        )
    return out
