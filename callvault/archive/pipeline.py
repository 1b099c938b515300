"""``callvault archive``: retention as a journal, not a script.

Each partition past retention walks ``detach -> export -> upload -> verify -> drop``. The step it
reached and everything needed to resume (source fingerprints, exported files, the manifest) live in
``callvault.archive_journal``; every step first looks at the real state (catalog, spool files, store)
and skips what is already done, so a crash or kill anywhere resumes on the next run. Nothing is
dropped until the objects were read back from the store and matched the database: object size and
SHA-256, and the content fingerprint of every tenant's rows computed by DuckDB over the downloaded
files against the one Postgres computed over the detached table (see :mod:`callvault.archive.layout`).

Who detaches: callvault, with ``DETACH PARTITION ... CONCURRENTLY`` (writers are never blocked; an
interrupted concurrent detach is finished with ``FINALIZE``). When a default partition exists
Postgres refuses the concurrent form, so callvault falls back to a plain ``DETACH`` under the lock
budget. pg_partman keeps its retention with ``retention_keep_table = true`` as a safety net (a
pg_cron-only setup still detaches on time); partitions it detached are picked up here, never dropped
by pg_partman. The worker runs ``archive`` before ``maintain`` so in that setup pg_partman finds
nothing left to detach.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from callvault import catalog, history, locks, naming, partman, private
from callvault._compat import renamed
from callvault.archive import export, journal, layout
from callvault.archive.faults import fault_point
from callvault.archive.journal import Job, ensure_tables
from callvault.archive.location import (
    SPOOL_ENV,
    default_spool,
    default_store_url,
    require_free_space,
    require_write_store,
)
from callvault.archive.progress import Sink, Tracker
from callvault.archive.report import ArchiveReport, PartitionResult
from callvault.archive.steps import (
    _Ctx,
    _spool_intact,
    close_drop_guard,
    start_drop_guard,
    step_detach,
    step_drop,
    step_export,
    step_upload,
    step_verify,
)
from callvault.archive.store import open_store
from callvault.config import Settings
from callvault.db import Conn, connect, server_now
from callvault.errors import (
    ArchiveVerifyFailed,
    Blocked,
    CallvaultError,
    DatabaseUnavailable,
    InvalidSetting,
    StoreUnavailable,
)
from callvault.logs import event, get_logger
from callvault.maintain import (
    current_plan,
    require_partman,
)

log = get_logger("archive")
__all__ = ["ArchiveReport", "Job", "PartitionResult", "archive", "candidates"]


# ---------------------------------------------------------------- candidates and the journal


def candidates(conn: Conn, settings: Settings, at: datetime, store_url: str, fmt: str) -> list[Job]:
    """Partitions to archive at ``at``: past retention (planner), detached leftovers past retention,
    and every journal entry not yet dropped. Oldest first."""
    pm = require_partman(conn, settings)
    plan = current_plan(conn, settings, pm, at)
    interval = plan.interval
    entries = journal.load(conn, settings)
    jobs = {s: j for s, j in entries.items() if j.step != "dropped"}
    done = {s for s, j in entries.items() if j.step == "dropped"}
    found: dict[datetime, tuple[str, datetime]] = {}
    for p in plan.retire:
        if p.start is not None and p.end is not None:
            found[p.start] = (p.name, p.end)
    if plan.cutoff is not None:
        pattern = partman.datetime_string(conn, settings, pm)
        for name, _size in catalog.list_detached(conn, settings):  # retention's, in any naming of either major
            start = naming.start_of(name, settings.table, interval, pattern)
            if start is not None and interval.add(start) < plan.cutoff:
                found.setdefault(start, (name, interval.add(start)))
    for start, (name, end) in found.items():
        if start not in jobs:
            # A week archived before and since restored into the hot table starts over.
            jobs[start] = Job(name, start, end, "pending", {}, store_url, fmt)
            if start in done:
                jobs[start].state = {"rearchive": True}
    return [jobs[s] for s in sorted(jobs)]


# ---------------------------------------------------------------- the driver


class _Redo(Exception):
    """A step found its input gone and sends the job back to ``step`` (e.g. a lost spool: export again)."""

    def __init__(self, step: str) -> None:
        self.step = step


def _run_detach(ctx: _Ctx, job: Job) -> tuple[int | None, int | None]:
    step_detach(ctx, job)
    return None, None


def _size(ctx: _Ctx, job: Job) -> tuple[int | None, int]:
    """The partition's estimated rows and its size on disk (heap + TOAST). The estimate is the larger of
    the planner's (``reltuples``: -1 before the first ANALYZE, stale when rows came after it) and the
    statistics system's live-row count (kept by every insert; reset by a crash); None when neither knows."""
    row = ctx.conn.execute(
        "SELECT nullif(greatest(nullif(c.reltuples, -1), pg_stat_get_live_tuples(c.oid)), 0)::bigint, "
        "pg_table_size(c.oid) FROM pg_class c WHERE c.oid = %s::regclass",
        (ctx.child(job).as_string(ctx.conn),),
    ).fetchone()
    return (None, 0) if row is None else (row[0], int(row[1]))


def _run_export(ctx: _Ctx, job: Job) -> tuple[int | None, int | None]:
    if ctx.progress:
        ctx.progress.start("export")
    rows, size = step_export(ctx, job)
    if ctx.progress:
        ctx.progress.finish()
    job.state["exported_at"] = datetime.now(UTC).isoformat()
    return rows, size


def _run_upload(ctx: _Ctx, job: Job) -> tuple[int | None, int | None]:
    if not _spool_intact(job):  # spool lost (reboot, tmp cleaner): export again
        raise _Redo("detached")
    if ctx.progress:
        ctx.progress.start("upload", rows_total=0, bytes_total=_spooled_bytes(job))
    start_drop_guard(ctx, job)  # the drop's count, on a core upload and verify leave idle
    sent = step_upload(ctx, job)
    if ctx.progress:
        ctx.progress.finish()
    return None, sent


def _spooled_bytes(job: Job) -> int:
    return sum(int(f["size"]) for entries in job.state.get("files", {}).values() for f in entries)


def _export_again(ctx: _Ctx, job: Job, what: str, logged: str, t0: float, exc: ArchiveVerifyFailed) -> None:
    """After a failed ``what`` (verify, drop) the table is kept and the journal goes back to ``detached``:
    the next run exports, uploads and verifies again (with any rows written into the table since)."""
    job.step = "detached"
    journal.save(ctx.conn, ctx.settings, job, error=f"{what}: {exc}", bump=True)
    journal.log(ctx.conn, ctx.settings, job, logged, time.perf_counter() - t0, None, None, str(exc))


def _run_verify(ctx: _Ctx, job: Job) -> tuple[int | None, int | None]:
    t0 = time.perf_counter()
    if ctx.progress:
        ctx.progress.start("verify", rows_total=0, bytes_total=_spooled_bytes(job))
    try:
        step_verify(ctx, job)
        if ctx.progress:
            ctx.progress.advance(0, _spooled_bytes(job))
            ctx.progress.finish()
    except ArchiveVerifyFailed as exc:
        _export_again(ctx, job, "verify", "verify-failed", t0, exc)
        raise
    return None, None


def _run_drop(ctx: _Ctx, job: Job) -> tuple[int | None, int | None]:
    t0 = time.perf_counter()
    try:
        step_drop(ctx, job)  # records "dropped" in the journal in the DROP's own transaction
    except ArchiveVerifyFailed as exc:  # rows written into the detached table after the export
        _export_again(ctx, job, "drop", "drop-refused", t0, exc)
        raise
    return None, None


@dataclass(frozen=True)
class Step:
    """One transition of the journal's step machine: what runs, the step it leads to, its fault point."""

    run: Callable[[_Ctx, Job], tuple[int | None, int | None]]  # -> (rows, bytes) when it knows them
    next: str
    fault: str  # FAULT_POINTS name fired right after the step


# The step machine: the journal's step -> what runs, where it leads, its fault point.
STEP_TABLE: dict[str, Step] = {
    "pending": Step(_run_detach, "detached", "detach"),
    "detached": Step(_run_export, "exported", "export"),
    "exported": Step(_run_upload, "uploaded", "upload"),
    "uploaded": Step(_run_verify, "verified", "verify"),
    "verified": Step(_run_drop, "dropped", "drop"),
}


def _advance(ctx: _Ctx, job: Job) -> PartitionResult:
    result = PartitionResult(job.partition, job.start, job.end, job.step, job.step)
    t_all = time.perf_counter()
    ctx.progress = None
    if job.step in ("pending", "detached"):
        # what a killed export left in the spool is not needed (the export starts over): not counted
        shutil.rmtree(ctx.job_spool(job), ignore_errors=True)
        rows_estimate, table_bytes = _size(ctx, job)
        # the whole partition passes through the spool before upload: never start what cannot finish
        require_free_space(
            ctx.table_spool if ctx.table_spool.exists() else ctx.spool, table_bytes, f"exporting {job.partition}",
            "nothing was detached or exported; the next run retries" if job.step == "pending"
            else "the detached table is kept; the next run retries",
        )  # fmt: skip
        if ctx.sink is not None:
            ctx.progress = Tracker(ctx.sink, "archive", job.partition, rows_total=rows_estimate,
                                   bytes_total=table_bytes)  # fmt: skip
    if job.step != "pending":
        event(log, logging.INFO, "archive resuming", partition=job.partition, step=job.step)
    try:
        _walk(ctx, job, result)
    finally:
        close_drop_guard(ctx)  # a failed step's guard lets go of its lock
    result.seconds = time.perf_counter() - t_all
    event(log, logging.INFO, "archived", partition=job.partition, rows=result.rows, bytes=result.bytes,
          seconds=result.seconds)  # fmt: skip
    return result


def _walk(ctx: _Ctx, job: Job, result: PartitionResult) -> None:
    """Run the job's steps until it is dropped (the journal records each)."""
    while job.step != "dropped":
        step = STEP_TABLE.get(job.step)
        if step is None:
            raise CallvaultError(f"archive journal of {job.partition} has an unknown step {job.step!r}")
        before = job.step  # the drop step records "dropped" itself, in the DROP's transaction
        event(log, logging.DEBUG, "archive step starting", partition=job.partition, step=before)
        t0 = time.perf_counter()
        try:
            rows, size = step.run(ctx, job)
        except _Redo as redo:
            event(log, logging.WARNING, "archive step input gone, going back", partition=job.partition,
                  step=job.step, back_to=redo.step)  # fmt: skip
            job.step = redo.step
            close_drop_guard(ctx)  # an export again may write into the table (a merge): no lock of ours on it
            continue
        job.step = step.next
        if job.step != "dropped":
            journal.save(ctx.conn, ctx.settings, job)
        took = time.perf_counter() - t0
        journal.log(ctx.conn, ctx.settings, job, job.step, took, rows, size)
        counts = {k: v for k, v in (("rows", rows), ("bytes", size)) if v is not None}
        event(log, logging.INFO, "archive step", partition=job.partition, **{"from": before, "to": job.step},
              seconds=took, **counts)  # fmt: skip
        if rows is not None:
            result.rows = rows
        if job.step == "exported":
            result.bytes = size or 0
        result.step_after = job.step
        fault_point(step.fault)


def archive(
    settings: Settings,
    *,
    store_url: str | None = None,
    format: str | None = None,
    at: datetime | None = None,
    dry_run: bool = False,
    spool: Path | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    fmt: str | None = None,
    progress: Sink | None = None,
    new_store: bool = False,
) -> ArchiveReport:
    """Archive every partition past retention at ``at`` (default now); see the module docstring.

    A partition that fails stays in the database and is reported in ``partitions`` with its ``error``
    and ``exit_code``; the run goes on with the next one (it stops when the store or the database is
    gone). The next run resumes each partition from its journal step.

    :param store_url: the archive store, ``s3://bucket/prefix`` or ``file:///dir`` (default the
        configured ``archive_url``, or the embedded home's archive when no DSN is set).
    :param fmt: ``parquet`` or ``csv``.
    :param dry_run: list the partitions that would be archived; change nothing.
    :param spool: local directory for exported files (default ``settings.spool``, else
        ``$CALLVAULT_ARCHIVE_SPOOL``, else one in the temporary directory).
    :param should_stop: asked before each partition; true ends the run early (the worker's shutdown).
    :param new_store: start a new store on purpose: one other than the store earlier periods of this
        table went to, or a directory that does not exist yet (refused otherwise, so a typo never splits
        the archive).
    :param progress: called with a :class:`~callvault.archive.progress.ProgressUpdate` (rows, bytes,
        rate, ETA) while each partition is exported, uploaded and verified, at most twice a second.
    :raises InvalidSetting: an unknown format, no store configured, a partition half-way into another
        store or format, or a new store without ``new_store`` (exit code 2).
    :raises NotInitialised: the table is not managed by pg_partman (exit code 66).
    :raises StoreUnavailable: the store cannot be reached or written before anything starts (exit code 69).
    :raises AlreadyRunning: another archive run holds the table's archive lock (exit code 75).

    Example:

        report = archive(settings, store_url="s3://calls-archive/prod")
        for p in report.partitions:
            print(p.partition, p.step_after, p.error)
    """
    fmt = renamed("archive", "fmt", fmt, "format", format) or "parquet"
    if dry_run:
        return _archive(settings, store_url, fmt, at, True, spool, should_stop, progress, new_store)
    with history.run(settings, "archive") as run:
        report = _archive(settings, store_url, fmt, at, False, spool, should_stop, progress, new_store)
        run.counts = report.counts()
        if report.failed:
            run.outcome, run.error = "failed", report.failed[0].error
    return report


def _archive(
    settings: Settings,
    store_url: str | None,
    fmt: str,
    at: datetime | None,
    dry_run: bool,
    spool: Path | None,
    should_stop: Callable[[], bool],
    progress: Sink | None,
    new_store: bool = False,
) -> ArchiveReport:
    if fmt not in layout.FORMATS:
        raise InvalidSetting(f"archive format {fmt!r} is not supported: use parquet or csv")
    url = store_url or default_store_url(settings)
    store = open_store(url)
    report = ArchiveReport(table=settings.qualified, store=store.url, fmt=fmt, dry_run=dry_run)
    with connect(settings, autocommit=True) as conn:
        when = at or server_now(conn)
        pm = require_partman(conn, settings)
        ensure_tables(conn)
        jobs = candidates(conn, settings, when, store.url, fmt)
        event(log, logging.DEBUG, "archive candidates", table=settings.qualified, at=when, store=store.url,
              partitions=[f"{j.partition}@{j.step}" for j in jobs], dry_run=dry_run)  # fmt: skip
        if dry_run:
            report.partitions = [PartitionResult(j.partition, j.start, j.end, j.step, "dropped") for j in jobs]
            return report
        if not jobs:
            event(log, logging.DEBUG, "nothing to archive", table=settings.qualified, at=when)
            return report
        require_write_store(settings, store, explicit=store_url is not None, new_store=new_store)
        store.check()  # unreachable store or bad credentials: stop before anything is detached
        where = spool or default_spool(settings)
        work = private.private_dir(where, f"archive spool directory (set {SPOOL_ENV} to move it)")
        key = locks.acquire(
            conn,
            settings,
            "archive",
            f"an archive run for {settings.qualified} is already in progress; try again later",
        )
        t_run = time.perf_counter()
        try:
            conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{settings.lock_timeout_ms}ms",))
            config = current_plan(conn, settings, pm, when)
            ctx = _Ctx(conn, settings, store, work, config.interval)
            ctx.sink = progress
            _sweep_spool(ctx, jobs)
            if fmt == "parquet":
                export.load_engines()  # once, before the first partition's clock starts
            for job in jobs:  # before anything moves: a refused run archives nothing (and is not a run)
                half_way = job.step not in ("pending", "detached") and "merged" not in job.state
                if (job.store_url != store.url or job.fmt != fmt) and half_way:
                    raise InvalidSetting(
                        f"{job.partition} is half-way into {job.store_url} ({job.fmt}); finish it with "
                        f"--to {job.store_url} --format {job.fmt}"
                    )
            blocked: str | None = None
            for job in jobs:
                if should_stop():
                    event(log, logging.INFO, "archive stopping on request", table=settings.qualified,
                          left=len(jobs) - len(report.partitions))  # fmt: skip
                    break
                if (job.store_url != store.url or job.fmt != fmt) and "merged" not in job.state:
                    if job.step not in ("pending", "detached"):
                        raise InvalidSetting(
                            f"{job.partition} is half-way into {job.store_url} ({job.fmt}); finish it with "
                            f"--to {job.store_url} --format {job.fmt}"
                        )
                    event(log, logging.DEBUG, "archive target changed before export", partition=job.partition,
                          store=store.url, format=fmt)  # fmt: skip
                    job.store_url, job.fmt = store.url, fmt
                if blocked and job.step == "pending":  # a detach that cannot finish blocks every detach
                    err = f"not detached: {blocked}"
                    event(
                        log, logging.WARNING, "archive skipped: an earlier detach is blocked", partition=job.partition
                    )
                    report.partitions.append(
                        PartitionResult(
                            job.partition,
                            job.start,
                            job.end,
                            job.step,
                            job.step,
                            error=err,
                            exit_code=Blocked.exit_code,
                        )
                    )
                    continue
                try:
                    report.partitions.append(_advance(ctx, job))
                except (CallvaultError, psycopg.Error) as exc:
                    code, msg = _failure(exc, job)
                    _log_failure(exc, job, code, msg)
                    res = PartitionResult(job.partition, job.start, job.end, job.step, job.step, error=msg,
                                          exit_code=code)  # fmt: skip
                    report.partitions.append(res)
                    if conn.closed or conn.broken:
                        break  # the database is gone: the next partitions would fail the same way
                    if not isinstance(exc, ArchiveVerifyFailed):
                        journal.save(conn, settings, job, error=msg, bump=True)
                    if isinstance(exc, Blocked) and job.step == "pending":
                        blocked = str(exc)
                    if isinstance(exc, StoreUnavailable):
                        break  # the store is gone: the next partitions would fail the same way
        finally:
            locks.release(conn, key)
        done = sum(1 for p in report.partitions if p.step_after == "dropped")
        event(log, logging.INFO, "archive run done", table=settings.qualified, partitions=len(report.partitions),
              archived=done, failed=len(report.failed), seconds=time.perf_counter() - t_run)  # fmt: skip
    return report


def _log_failure(exc: Exception, job: Job, code: int, msg: str) -> None:
    """Verify failures, locks held past the budget and an unavailable store or spool are WARNINGs (the
    partition is kept and the next run retries them); anything else is an ERROR."""
    if isinstance(exc, ArchiveVerifyFailed):
        what, level = "archive verify failed, partition kept", logging.WARNING
    elif code == Blocked.exit_code:
        what, level = "archive blocked, partition kept", logging.WARNING
    elif isinstance(exc, StoreUnavailable):  # the store or the spool: the run stops and says so itself
        what, level = "archive stopped: store or spool unavailable, partition kept", logging.WARNING
    else:
        what, level = "archive step failed", logging.ERROR
    event(log, level, what, partition=job.partition, step=job.step, exit_code=code, error=msg)


def _failure(exc: Exception, job: Job) -> tuple[int, str]:
    """Exit code and message of a partition that stopped at ``job.step``: what really happened.

    65 read-back mismatch, 69 store or database unreachable, 75 a lock held past the budget (or
    another run), 1 anything else (an unexpected database error, named with the step)."""
    if isinstance(exc, CallvaultError):
        return exc.exit_code, str(exc)
    assert isinstance(exc, psycopg.Error)
    msg = f"{job.partition} at step {job.step!r}: {exc.diag.message_primary or exc}"
    if isinstance(exc, psycopg.errors.LockNotAvailable | psycopg.errors.QueryCanceled):
        return Blocked.exit_code, msg
    if isinstance(exc, psycopg.OperationalError) and (exc.sqlstate is None or exc.sqlstate.startswith(("08", "57"))):
        return DatabaseUnavailable.exit_code, f"{msg} (the database connection was lost; the next run resumes)"
    return CallvaultError.exit_code, msg


def _sweep_spool(ctx: _Ctx, jobs: list[Job]) -> None:
    """Remove what killed runs left in the spool: work directories of dead processes, and exported
    files of this table's partitions that no unfinished journal entry points at."""
    removed = [p.name for kind in ("verify", "merge", "restore") for p in private.sweep(ctx.spool, kind)]
    table_spool = ctx.table_spool
    if table_spool.is_dir():
        live = {j.partition for j in jobs}
        for entry in table_spool.iterdir():
            if entry.name not in live:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
    if removed:
        event(log, logging.INFO, "swept spool leftovers of earlier runs", spool=ctx.spool, removed=sorted(removed))
