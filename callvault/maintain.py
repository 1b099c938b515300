"""``callvault maintain``: pg_partman maintenance, safely.

* A fresh autocommit connection per run, closed afterwards: pg_partman's session-level advisory lock
  can never leak into a pooled connection.
* callvault's own advisory lock per table: a second concurrent run exits with AlreadyRunning
  (exit code 75) or, with ``wait``, queues behind the first. pg_partman's own "already running"
  notice (e.g. a pg_cron job in progress) is turned into the same error.
* A lock budget (``lock_timeout``) on every DDL statement, retried with backoff, so ingest never
  stalls longer than the budget behind a partition being created or detached.
* ``at``: apply the planner's view of that moment instead (create what is missing up to the horizon,
  detach what is past retention at ``at``) with pg_partman's own create/retention functions.
* One owner per change: every command that attaches, detaches or drops partitions of a table
  (``maintain`` for its whole run, ``archive`` for its detach and drop steps) holds :func:`table_lock`,
  which is callvault's per-table lock plus pg_partman's own retention locks, so a pg_cron
  ``run_maintenance()`` skips (with its "already running" notice) instead of detaching the partition
  the archive is working on.
* An interrupted ``DETACH ... CONCURRENTLY`` (a partition "pending detach") is finished with
  ``FINALIZE`` by whichever command meets it first. If a session keeps it from finishing, maintenance
  still premakes (pg_partman's retention cannot run past a pending detach, so the planner's partitions
  are created without it) and then exits 75 naming the session.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg import errors as pgerr
from psycopg import sql

from callvault import catalog, citus, db, history, locks, naming, partman, tenancy, waits
from callvault.config import Settings
from callvault.db import Conn, connect
from callvault.errors import AlreadyRunning, Blocked, CallvaultError, NotInitialised
from callvault.locks import LOCK_NAMESPACE as LOCK_NAMESPACE  # re-exported
from callvault.locks import PARTMAN_LOCKS as PARTMAN_LOCKS  # re-exported
from callvault.logs import event, get_logger
from callvault.partman import PartmanInfo
from callvault.plan import Plan, build_plan

RETRIES = 5  # lock_timeout hits before giving up
BACKOFF_S = 0.2  # first retry delay, doubled each time (0.2 + 0.4 + ... = ~6 s over 5 tries)
PARTMAN_BUSY = "already running"

log = get_logger("maintain")


@dataclass
class MaintenanceReport:
    """What one maintenance run changed: partitions created, detached and dropped (names), tenant
    isolation repaired, interrupted detaches finished, and how long it took."""

    table: str
    at: datetime | None
    created: list[str] = field(default_factory=list)
    detached: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    secured: list[str] = field(default_factory=list)  # tenant-isolation repairs (see callvault.tenancy.repair)
    unsecured: list[str] = field(default_factory=list)  # repairs that failed, with why
    finalized: list[str] = field(default_factory=list)  # interrupted concurrent detaches finished
    blocked: str | None = None  # why retention could not run (premaking still did)
    attempts: int = 0
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        """Whether the run created, detached, dropped, repaired or finished anything."""
        return bool(self.created or self.detached or self.dropped or self.secured or self.finalized)

    def counts(self) -> dict[str, object]:
        """What the job history keeps of the run: how many partitions each action touched."""
        return {
            "created": len(self.created), "detached": len(self.detached), "dropped": len(self.dropped),
            "secured": len(self.secured), "unsecured": len(self.unsecured), "finalized": len(self.finalized),
            "attempts": self.attempts, "blocked": self.blocked is not None,
        }  # fmt: skip

    def to_dict(self) -> dict[str, object]:
        """The report as JSON-ready values (``callvault maintain --json``)."""
        return {
            "table": self.table, "at": self.at.isoformat() if self.at else None,
            "created": self.created, "detached": self.detached, "dropped": self.dropped,
            "secured": self.secured, "unsecured": self.unsecured,
            "finalized": self.finalized, "blocked": self.blocked,
            "attempts": self.attempts, "seconds": round(self.seconds, 3),
        }  # fmt: skip


def require_partman(conn: Conn, settings: Settings) -> PartmanInfo:
    """The installed pg_partman, once it manages the table.

    :raises NotInitialised: pg_partman is not installed in this database, or does not manage the
        table: run ``callvault init`` first (exit code 66).
    """
    pm = partman.installed(conn)
    if pm is None or partman.read_config(conn, settings, pm) is None:
        raise NotInitialised(
            f"{settings.qualified} is not managed by pg_partman in this database: run `callvault init` first"
        )
    return pm


def require_supported_naming(conn: Conn, settings: Settings, pm: PartmanInfo) -> None:
    """Refuse to maintain an ISO-weekly table under pg_partman 5.x (whose ``run_maintenance()`` raises
    for it), naming the fix instead of the extension's error.

    :raises NotInitialised: the table needs ``callvault migrate-names`` first (exit code 66)."""
    pattern = partman.datetime_string(conn, settings, pm)
    if pm.major >= 5 and pattern in naming.UNSUPPORTED_IN_5:
        raise NotInitialised(
            f"pg_partman {pm.version} cannot maintain {settings.qualified}: its partitions use pg_partman 4.x's "
            f"ISO week names (datetime_string {pattern}), unsupported since 5.0; run `callvault migrate-names` "
            "first (it renames them under the lock budget while writes continue), then maintain again"
        )


def current_plan(conn: Conn, settings: Settings, pm: PartmanInfo, at: datetime) -> Plan:
    """The plan at ``at`` from what exists now: pg_partman's rules for the installed version."""
    config = partman.read_config(conn, settings, pm)
    assert config is not None
    rows = catalog.list_partitions(conn, settings)
    return build_plan(
        config,
        at,
        [r.info for r in rows],
        table=settings.table,
        default_rows=catalog.default_rows(conn, settings),
        partman_major=pm.major,
        newest_row=catalog.newest_row(conn, settings) if pm.major >= 5 else None,
        default_newest=catalog.default_newest(conn, settings),
        datetime_string=partman.datetime_string(conn, settings, pm),
    )


def retry_locks(
    work: Callable[[], None],
    what: str,
    blockers: Callable[[], str] | None = None,
    *,
    logger: logging.Logger | None = None,
) -> int:
    """Run ``work``; on a lock timeout wait and try again (``RETRIES`` times). Returns the attempts used.

    Giving up raises :class:`Blocked` (exit 75) naming the sessions ``blockers`` describes. Each retry
    and the giving up are WARNINGs on ``logger`` (default ``callvault.maintain``)."""
    logger = logger or log
    delay = BACKOFF_S
    for attempt in range(1, RETRIES + 1):
        try:
            work()
            return attempt
        except psycopg.Error as exc:
            # pg_partman re-raises errors from its own EXCEPTION blocks as P0001, so classify by
            # SQLSTATE where it survives and by message where it does not.
            msg = exc.diag.message_primary or str(exc)
            if "default partition" in msg and "concurrently" not in msg:
                raise CallvaultError(
                    f"{what} failed: {msg}. Rows stranded in the default partition "
                    "overlap a partition that must be created; move them out (see `callvault status`) and "
                    "run maintain again"
                ) from exc
            if not (isinstance(exc, pgerr.LockNotAvailable) or "lock timeout" in msg):
                raise
            if attempt == RETRIES:
                who = blockers() if blockers else ""
                event(logger, logging.WARNING, "lock budget exhausted, giving up", what=what, attempts=attempt,
                      holders=who.strip(" ()") or None)  # fmt: skip
                raise Blocked(
                    f"{what} gave up after {RETRIES} tries: another session held a lock longer than the lock "
                    f"budget each time{who}. End that session's transaction, or raise CALLVAULT_LOCK_TIMEOUT_MS; "
                    "the next run retries"
                ) from None
            event(logger, logging.WARNING, "lock timeout, retrying", what=what, attempt=attempt, of=RETRIES,
                  wait_s=delay)  # fmt: skip
            waits.sleep(delay)
            delay *= 2
    return RETRIES


def lock_holders(conn: Conn, relation: sql.Composable) -> str:
    """`` (pid 123 user app, idle in transaction since 12:00:01)``: the other sessions holding a lock on
    ``relation``, for error messages. Empty when none (or the relation is gone)."""
    try:
        rows = conn.execute(
            sql.SQL(
                "SELECT DISTINCT a.pid, a.usename, a.state, a.xact_start FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.granted AND l.pid <> pg_backend_pid() "
                "AND l.relation = to_regclass({}) ORDER BY a.pid LIMIT 3"
            ).format(sql.Literal(relation.as_string(conn)))
        ).fetchall()
    except psycopg.Error:
        return ""
    if not rows:
        return ""
    parts = [f"pid {pid} user {user}, {state} since {start:%Y-%m-%d %H:%M:%S%z}" for pid, user, state, start in rows]
    return " (" + "; ".join(parts) + ")"


@contextmanager
def table_lock(conn: Conn, settings: Settings, what: str, *, logger: logging.Logger | None = None) -> Iterator[None]:
    """Hold the right to attach/detach/drop partitions of the table: callvault's per-table lock and
    pg_partman's retention locks (session level, so DDL inside may commit). Waits under the lock
    budget (``lock_timeout`` of ``conn``) with retries; :class:`Blocked` when it cannot have them.
    Waits are logged on ``logger`` (default ``callvault.maintain``)."""
    logger = logger or log
    key = locks.key(conn, settings)
    held: list[str] = []

    def take() -> None:
        locks.take_partition_locks(conn, key, held)

    t0 = time.perf_counter()
    tries = retry_locks(take, f"{what} (waiting for maintenance of {settings.qualified} to finish)", logger=logger)
    event(logger, logging.DEBUG, "table lock held", table=settings.qualified, what=what, attempts=tries,
          waited_s=time.perf_counter() - t0)  # fmt: skip
    try:
        yield
    finally:
        if not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            locks.release_partition_locks(conn, key, held)


def _run(conn: Conn, stmt: sql.Composed) -> None:
    conn.execute(stmt)


def finalize_pending(conn: Conn, settings: Settings, *, logger: logging.Logger | None = None) -> list[str]:
    """Finish every interrupted ``DETACH ... CONCURRENTLY`` of the table (``FINALIZE``), under the lock
    budget with retries. Returns the partitions finished; :class:`Blocked` names who kept one pending.
    The caller holds :func:`table_lock`. Each one finished is an INFO on ``logger`` (default
    ``callvault.maintain``)."""
    logger = logger or log
    done = []
    parent = sql.Identifier(settings.schema, settings.table)
    for name in catalog.pending_detach(conn, settings):
        child = sql.Identifier(settings.schema, name)
        stmt = sql.SQL("ALTER TABLE {} DETACH PARTITION {} FINALIZE").format(parent, child)
        retry_locks(
            lambda stmt=stmt: _run(conn, stmt),  # type: ignore[misc]
            f"finishing the interrupted detach of {name}",
            lambda child=child: lock_holders(conn, child),  # type: ignore[misc]
            logger=logger,
        )
        event(logger, logging.INFO, "finished an interrupted detach", partition=name)
        done.append(name)
    return done


def _apply(conn: Conn, settings: Settings, pm: PartmanInfo, at: datetime | None, retention: bool = True) -> None:
    """Without ``at``: pg_partman's own ``run_maintenance()`` (what pg_cron runs), then the gaps it
    leaves. With ``at``: the plan for that instant, which mirrors run_maintenance's rules, applied
    with pg_partman's retention and create functions in the order it uses (retention first).
    ``retention=False`` (a detach is pending and cannot finish): only create, from the plan."""
    distributed = citus.is_distributed(conn, settings)
    if at is None and retention:
        with conn.transaction() if distributed else nullcontext():
            if distributed:  # a session lock_timeout is not sent to Citus workers; SET LOCAL is
                citus.local_lock_budget(conn, settings)
            conn.execute(partman.run_maintenance_sql(settings, pm))
        plan = current_plan(conn, settings, pm, db.server_now(conn))
        with conn.transaction():
            if distributed:
                citus.local_lock_budget(conn, settings)
            _create(conn, settings, pm, plan)
        return
    plan = current_plan(conn, settings, pm, at or db.server_now(conn))
    with conn.transaction():
        if distributed:
            citus.local_lock_budget(conn, settings)
        if plan.cutoff is not None and retention:
            conn.execute(partman.retention_sql(settings, pm, at or db.server_now(conn)))
        _create(conn, settings, pm, plan)


def _create(conn: Conn, settings: Settings, pm: PartmanInfo, plan: Plan) -> None:
    if plan.create:
        conn.execute(partman.create_partitions_sql(settings, pm, [p.start for p in plan.create]))


def _secure(conn: Conn, settings: Settings, report: MaintenanceReport) -> None:
    """Every run re-checks tenant isolation on every partition (new ones included) and repairs drift.
    A repair that fails (a lock, a partition someone else owns) is reported; the next run retries."""
    with conn.transaction():
        result = tenancy.secure(conn, settings)
    report.secured, report.unsecured = result.done, result.failed


def _log_result(report: MaintenanceReport) -> None:
    event(log, logging.INFO, "maintenance done", table=report.table, at=report.at, created=report.created,
          detached=report.detached, dropped=report.dropped, finalized=report.finalized,
          secured=len(report.secured), attempts=report.attempts, seconds=report.seconds,
          blocked=report.blocked is not None)  # fmt: skip
    if report.secured:
        event(log, logging.DEBUG, "tenant isolation repaired", table=report.table, repairs=report.secured)
    if report.unsecured:
        event(log, logging.WARNING, "tenant isolation repairs failed; the next run retries", table=report.table,
              failed=report.unsecured)  # fmt: skip


def maintain(settings: Settings, *, at: datetime | None = None, wait: bool = False) -> MaintenanceReport:
    """Run maintenance once and report what changed (``callvault maintain``), on a fresh autocommit
    connection closed afterwards.

    :param at: apply the planner's view of that moment (create up to its horizon, retire what is past
        retention then) instead of pg_partman's ``run_maintenance()`` at the server's now.
    :param wait: queue behind a concurrent run instead of failing.
    :raises NotInitialised: the table is not managed by pg_partman yet (exit code 66).
    :raises AlreadyRunning: another run holds the table's lock (and ``wait`` is false), or pg_partman's
        own maintenance is running (exit code 75).
    :raises Blocked: a lock was held past the lock budget on every retry, or a pending detach could not be
        finished; partitions were still premade, retention waits for the next run (exit code 75).
    :raises DatabaseUnavailable: the database cannot be reached (exit code 69).

    Example:

        report = maintain(settings)
        print(report.created, report.detached, report.dropped)
    """
    with history.run(settings, "maintain") as run:
        report = _maintain(settings, at, wait)
        run.counts = report.counts()
        if report.blocked:
            made = f"created {len(report.created)} partition(s); " if report.created else ""
            raise Blocked(f"{made}retention did not run: {report.blocked}")
    return report


def _maintain(settings: Settings, at: datetime | None, wait: bool) -> MaintenanceReport:
    report = MaintenanceReport(table=settings.qualified, at=at)
    t0 = time.perf_counter()
    busy: list[str] = []
    with connect(settings, autocommit=True) as conn:
        pm = require_partman(conn, settings)
        require_supported_naming(conn, settings, pm)
        key = locks.acquire(
            conn,
            settings,
            "",
            "maintenance is already running for this table in another session; try again later",
            wait=wait,
        )
        event(log, logging.DEBUG, "maintenance lock held", table=report.table, at=at, wait=wait,
              waited_s=time.perf_counter() - t0)  # fmt: skip
        try:
            conn.add_notice_handler(lambda d: busy.append(d.message_primary or ""))
            conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{settings.lock_timeout_ms}ms",))
            before_attached, _ = catalog.partition_names(conn, settings)
            try:
                report.finalized = finalize_pending(conn, settings)
            except Blocked as exc:
                report.blocked = str(exc)  # premake anyway; retention waits for the next run
                event(log, logging.WARNING, "retention blocked by a pending detach; premaking only",
                      table=report.table, reason=report.blocked)  # fmt: skip
            retention = report.blocked is None
            report.attempts = retry_locks(
                lambda: _apply(conn, settings, pm, at, retention), f"maintenance on {report.table}"
            )
            if any(PARTMAN_BUSY in m for m in busy):
                raise AlreadyRunning("pg_partman maintenance is already running in another session (pg_cron?)")
            after_attached, after_detached = catalog.partition_names(conn, settings)
            report.created = sorted(after_attached - before_attached)
            gone = before_attached - after_attached
            report.detached = sorted(gone & after_detached)
            report.dropped = sorted(gone - after_detached)
            _secure(conn, settings, report)
            report.seconds = time.perf_counter() - t0
        finally:
            locks.release(conn, key)
    _log_result(report)
    return report
