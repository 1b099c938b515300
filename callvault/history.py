"""Job history: every ``maintain``, ``archive`` and ``prune`` run, kept for a bounded time.

Each run, from the CLI, the worker or a program, leaves one row in ``callvault.job_history``: the job,
the table, when it started and finished (the database server's clock), the outcome (``ok``, ``failed``,
``blocked``: maintenance premade but retention waited), its counts and, when it failed, the reason.
``callvault history [--json]`` answers "what happened last night".

* Bounded: rows older than ``$CALLVAULT_HISTORY_DAYS`` (default 90) are deleted when a run is recorded.
* ``callvault.job_totals`` keeps the number of runs per (table, job, outcome) forever: the counters
  behind ``callvault_job_runs_total``, which must never go down when old history is deleted.
* Recording never fails the job: a database that is gone (the job's own failure, often) is logged and
  the job's own result or error stands.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from psycopg import sql

from callvault import catalog, config, schema
from callvault.config import META_SCHEMA, Settings
from callvault.db import Conn, connect
from callvault.errors import AlreadyRunning, Blocked, InvalidSetting, NotInitialised
from callvault.logs import event, get_logger

log = get_logger("history")

JOBS = ("maintain", "archive", "prune")
OUTCOMES = ("ok", "failed", "blocked")
HISTORY_DAYS_ENV = "CALLVAULT_HISTORY_DAYS"
DEFAULT_HISTORY_DAYS = 90
HISTORY = sql.Identifier(META_SCHEMA, "job_history")
TOTALS = sql.Identifier(META_SCHEMA, "job_totals")
TABLES = ("job_history", "job_totals")
WORKER_STATUS = sql.Identifier(META_SCHEMA, "worker_status")  # the worker's heartbeat (callvault.worker writes it)


def history_days(environ: dict[str, str] | None = None) -> int:
    """Days of job history kept (``$CALLVAULT_HISTORY_DAYS``, default 90).

    :raises InvalidSetting: not a positive whole number of days."""
    raw = ((config.knob(HISTORY_DAYS_ENV) if environ is None else environ.get(HISTORY_DAYS_ENV)) or "").strip()
    if not raw:
        return DEFAULT_HISTORY_DAYS
    try:
        days = int(raw)
    except ValueError:
        days = 0
    if days <= 0:
        raise InvalidSetting(f"{HISTORY_DAYS_ENV}={raw!r} is not a positive number of days: use e.g. 90")
    return days


def _days() -> int:
    try:
        return history_days()
    except InvalidSetting as exc:  # bad configuration must not cost the run's record
        event(log, logging.WARNING, "using the default job history period", reason=str(exc),
              days=DEFAULT_HISTORY_DAYS)  # fmt: skip
        return DEFAULT_HISTORY_DAYS


def ensure(conn: Conn) -> None:
    """Create the history tables where an older install lacks them (autocommit connection)."""
    catalog.ensure_meta(conn, TABLES, schema.history_sql())


@dataclass
class Run:
    """One run being recorded: set ``counts`` (JSON-ready values) while it works."""

    job: str
    counts: dict[str, Any] = field(default_factory=dict)
    outcome: str | None = None  # set to override what the exit of the block implies (e.g. "failed")
    error: str | None = None


def record(
    conn: Conn, settings: Settings, job: str, seconds: float, outcome: str, counts: dict[str, Any], error: str | None
) -> None:
    """Insert one finished run (started ``seconds`` before the server's now), count it in the totals,
    and delete history older than :func:`history_days`. One transaction."""
    if job not in JOBS or outcome not in OUTCOMES:
        raise ValueError(f"job {job!r} / outcome {outcome!r}")
    ensure(conn)
    with conn.transaction():
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (parent_table, job, started_at, finished_at, outcome, counts, error, host, pid) "
                "VALUES (%s, %s, clock_timestamp() - make_interval(secs => %s), clock_timestamp(), %s, %s, %s, %s, %s)"
            ).format(HISTORY),
            (settings.qualified, job, max(seconds, 0.0), outcome, json.dumps(counts, default=str),
             error, socket.gethostname(), os.getpid()),
        )  # fmt: skip
        key = (settings.qualified, job, outcome)
        conn.execute(  # the row exists before it is locked: two first records cannot both read nothing
            sql.SQL("INSERT INTO {} (parent_table, job, outcome) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING").format(
                TOTALS
            ),
            key,
        )
        row = conn.execute(
            sql.SQL("SELECT counts FROM {} WHERE parent_table = %s AND job = %s AND outcome = %s FOR UPDATE").format(
                TOTALS
            ),
            key,
        ).fetchone()
        summed = add_counts(row[0] if row else {}, counts)
        conn.execute(
            sql.SQL(
                "UPDATE {} SET runs = runs + 1, counts = %s WHERE parent_table = %s AND job = %s AND outcome = %s"
            ).format(TOTALS),
            (json.dumps(summed), *key),
        )
        conn.execute(
            sql.SQL(
                "DELETE FROM {} WHERE parent_table = %s AND finished_at < clock_timestamp() - make_interval(days => %s)"
            ).format(HISTORY),
            (settings.qualified, _days()),
        )


def add_counts(total: dict[str, Any], counts: dict[str, Any]) -> dict[str, Any]:
    """``total`` plus the numeric values of ``counts`` (booleans and texts are not summed). Pure."""
    out = dict(total)
    for k, v in counts.items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            out[k] = out.get(k, 0) + v
    return out


def totals(conn: Conn, settings: Settings) -> list[tuple[str, str, int, dict[str, Any]]]:
    """(job, outcome, runs, summed counts) of every job the table ever ran (never decreasing)."""
    if not catalog.meta_table_exists(conn, "job_totals"):
        return []
    rows = conn.execute(
        sql.SQL("SELECT job, outcome, runs, counts FROM {} WHERE parent_table = %s ORDER BY 1, 2").format(TOTALS),
        (settings.qualified,),
    ).fetchall()
    return [(str(j), str(o), int(r), dict(c)) for j, o, r, c in rows]


def latest(conn: Conn, settings: Settings) -> dict[str, dict[str, Any]]:
    """Per job: its last run (``finished_at``, ``outcome``, ``seconds``, ``counts``) and ``last_ok`` (the
    finish of its last ``ok`` run, None when none is in the history)."""
    if not catalog.meta_table_exists(conn, "job_history"):
        return {}
    rows = conn.execute(  # per job: two index probes (job_history_finished_idx), whatever the history holds
        sql.SQL(
            "SELECT j.job, l.finished_at, l.outcome, extract(epoch FROM l.finished_at - l.started_at)::float8, "
            "l.counts, (SELECT h.finished_at FROM {t} h WHERE h.parent_table = %(t)s AND h.job = j.job "
            "AND h.outcome = 'ok' ORDER BY h.finished_at DESC LIMIT 1) "
            "FROM unnest(%(jobs)s::text[]) AS j(job) "
            "CROSS JOIN LATERAL (SELECT * FROM {t} h WHERE h.parent_table = %(t)s AND h.job = j.job "
            "ORDER BY h.finished_at DESC, h.id DESC LIMIT 1) l"
        ).format(t=HISTORY),
        {"t": settings.qualified, "jobs": list(JOBS)},
    ).fetchall()
    return {
        str(job): {"finished_at": fin, "outcome": out, "seconds": secs, "counts": dict(counts), "last_ok": ok}
        for job, fin, out, secs, counts, ok in rows
    }


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def run(settings: Settings, job: str) -> Iterator[Run]:
    """Record the block as one run of ``job``: ``ok`` when it returns, ``blocked`` on
    :class:`~callvault.errors.Blocked`, ``failed`` on any other exception (re-raised unchanged).
    :class:`~callvault.errors.AlreadyRunning`, :class:`~callvault.errors.NotInitialised` and
    :class:`~callvault.errors.InvalidSetting` are not recorded: the job did not run.

    Recording uses its own short connection after the block, so a job whose connection broke is still
    recorded when the database is back; when it is not, a warning is logged and nothing else happens."""
    r = Run(job)
    t0 = time.perf_counter()
    try:
        yield r
    except (AlreadyRunning, NotInitialised, InvalidSetting):
        raise  # it did not run: another run holds the table, callvault does not manage it, or bad input
    except Blocked as exc:
        _save(settings, r, time.perf_counter() - t0, "blocked", _first_line(exc))
        raise
    except Exception as exc:
        _save(settings, r, time.perf_counter() - t0, "failed", _first_line(exc))
        raise
    _save(settings, r, time.perf_counter() - t0, r.outcome or "ok", r.error)


def _save(settings: Settings, r: Run, seconds: float, outcome: str, error: str | None) -> None:
    try:
        with connect(settings.with_(start_embedded=False), autocommit=True) as conn:
            record(conn, settings, r.job, seconds, r.outcome or outcome, r.counts, r.error or error)
    except Exception as exc:  # never let bookkeeping hide the job's own result
        event(log, logging.WARNING, "job history not recorded", job=r.job, table=settings.qualified,
              outcome=outcome, reason=_first_line(exc))  # fmt: skip


@dataclass(frozen=True)
class JobRun:
    """One row of ``callvault history``."""

    id: int
    table: str
    job: str
    started_at: datetime
    finished_at: datetime
    outcome: str
    counts: dict[str, Any]
    error: str | None
    host: str | None
    pid: int | None

    @property
    def seconds(self) -> float:
        """How long the run took."""
        return (self.finished_at - self.started_at).total_seconds()

    def to_dict(self) -> dict[str, object]:
        """The run as JSON-ready values (``callvault history --json``)."""
        return {
            "id": self.id, "table": self.table, "job": self.job,
            "started_at": self.started_at.astimezone(UTC).isoformat(),
            "finished_at": self.finished_at.astimezone(UTC).isoformat(), "seconds": round(self.seconds, 3),
            "outcome": self.outcome, "counts": self.counts, "error": self.error, "host": self.host, "pid": self.pid,
        }  # fmt: skip


def runs(
    conn: Conn,
    settings: Settings,
    *,
    job: str | None = None,
    since: datetime | None = None,
    outcome: str | None = None,
    limit: int = 100,
) -> list[JobRun]:
    """The table's recorded runs, newest first (``callvault history``).

    :param job: only ``maintain``, ``archive`` or ``prune`` runs.
    :param since: only runs that finished at or after it.
    :param outcome: only ``ok``, ``failed`` or ``blocked`` runs.
    :raises InvalidSetting: an unknown job or outcome, or a limit below 1 (exit code 2)."""
    if job is not None and job not in JOBS:
        raise InvalidSetting(f"job {job!r} is not one callvault records: use one of {', '.join(JOBS)}")
    if outcome is not None and outcome not in OUTCOMES:
        raise InvalidSetting(f"outcome {outcome!r} is not one of {', '.join(OUTCOMES)}")
    if limit < 1:
        raise InvalidSetting(f"limit {limit} must be at least 1")
    if not catalog.meta_table_exists(conn, "job_history"):
        return []
    where: list[sql.Composable] = [sql.SQL("parent_table = %s")]
    params: list[Any] = [settings.qualified]
    for column, value in (("job", job), ("outcome", outcome)):
        if value is not None:
            where.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            params.append(value)
    if since is not None:
        where.append(sql.SQL("finished_at >= %s"))
        params.append(since)
    rows = conn.execute(
        sql.SQL(
            "SELECT id, parent_table, job, started_at, finished_at, outcome, counts, error, host, pid FROM {} "
            "WHERE {} ORDER BY finished_at DESC, id DESC LIMIT %s"
        ).format(HISTORY, sql.SQL(" AND ").join(where)),
        [*params, limit],
    ).fetchall()
    return [JobRun(*r) for r in rows]


def last_run(conn: Conn, settings: Settings) -> dict[str, Any] | None:
    """The worker's heartbeat row for ``status``/``health``, or None when no worker ever ran."""
    if not catalog.meta_table_exists(conn, "worker_status"):
        return None
    row = conn.execute(
        sql.SQL(
            "SELECT pid, host, every_seconds, cycle_started, cycle_ok, last_error, updated_at FROM {} "
            "WHERE parent_table = %s"
        ).format(WORKER_STATUS),
        (settings.qualified,),
    ).fetchone()
    if row is None:
        return None
    keys = ("pid", "host", "every_seconds", "cycle_started", "cycle_ok", "last_error", "updated_at")
    return dict(zip(keys, row, strict=True))
