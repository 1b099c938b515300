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

import hashlib
import logging
import re
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql

from callvault import catalog, citus, history, locks, naming, partman, private
from callvault._compat import renamed
from callvault.archive import export, journal, layout
from callvault.archive.faults import fault_point
from callvault.archive.journal import Job, ensure_tables
from callvault.archive.layout import Fingerprint, Manifest, ObjectEntry, TenantEntry
from callvault.archive.location import (
    SPOOL_ENV,
    default_spool,
    default_store_url,
    require_free_space,
    require_write_store,
)
from callvault.archive.progress import Sink, Tracker
from callvault.archive.store import Store, open_store, sha256_file
from callvault.archive.verify import verify_manifest
from callvault.config import Settings
from callvault.db import Conn, connect, resolve_dsn, server_now
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
    finalize_pending,
    lock_holders,
    require_partman,
    retry_locks,
    table_lock,
)
from callvault.plan import Interval

log = get_logger("archive")


@dataclass
class PartitionResult:
    """One partition in an archive run: the journal step it started at and reached (``dropped`` when
    done), rows and exported bytes, time taken, and on failure the message and exit code."""

    partition: str
    start: datetime
    end: datetime
    step_before: str
    step_after: str
    rows: int | None = None
    bytes: int = 0
    seconds: float = 0.0
    error: str | None = None
    exit_code: int = 0

    def to_dict(self) -> dict[str, object]:
        """The result as JSON-ready values (one entry of ``callvault archive --json``)."""
        return {
            "partition": self.partition, "from": self.start.isoformat(), "to": self.end.isoformat(),
            "step_before": self.step_before, "step_after": self.step_after, "rows": self.rows,
            "bytes": self.bytes, "seconds": round(self.seconds, 3), "error": self.error,
        }  # fmt: skip


@dataclass
class ArchiveReport:
    """What one archive run did to each partition past retention (with ``dry_run``: what it would do)."""

    table: str
    store: str
    fmt: str
    dry_run: bool
    partitions: list[PartitionResult] = field(default_factory=list)

    @property
    def failed(self) -> list[PartitionResult]:
        """The partitions that stopped with an error (kept in the database; the next run resumes them)."""
        return [p for p in self.partitions if p.error]

    def counts(self) -> dict[str, object]:
        """What the job history keeps of the run: partitions seen, archived (dropped after verify),
        failed and failed at verify; rows and exported bytes of the archived ones."""
        done = [p for p in self.partitions if p.step_after == "dropped" and not p.error]
        return {
            "partitions": len(self.partitions), "archived": len(done), "failed": len(self.failed),
            "verify_failed": sum(1 for p in self.failed if p.exit_code == ArchiveVerifyFailed.exit_code),
            "rows": sum(p.rows or 0 for p in done), "bytes": sum(p.bytes for p in done),
        }  # fmt: skip

    def to_dict(self) -> dict[str, object]:
        """The report as JSON-ready values (``callvault archive --json``)."""
        return {
            "table": self.table, "store": self.store, "format": self.fmt, "dry_run": self.dry_run,
            "partitions": [p.to_dict() for p in self.partitions],
        }  # fmt: skip


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


# ---------------------------------------------------------------- the steps


class _Ctx:
    def __init__(self, conn: Conn, settings: Settings, store: Store, spool: Path, interval: Interval) -> None:
        self.conn = conn
        self.settings = settings
        self.store = store
        self.spool = spool
        self.interval = interval
        self.tdir = layout.table_dir(settings.schema, settings.table)
        self.dsn = resolve_dsn(settings)  # the exporter's own (ADBC) connection
        # The spool is shared by every database archived from this machine: each gets its own subtree,
        # or two databases with the same table name would export into (and sweep) each other's files.
        ident = f"{conn.info.host}:{conn.info.port}/{conn.info.dbname}"
        tag = (
            f"{re.sub(r'[^A-Za-z0-9_]', '_', conn.info.dbname)[:40]}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"
        )
        self.table_spool = spool / tag / self.tdir
        self.progress: Tracker | None = None  # the partition being archived, when someone watches
        self.sink: Sink | None = None
        # Citus refuses DETACH ... CONCURRENTLY on distributed tables: a plain DETACH in a transaction
        # whose SET LOCAL lock_timeout Citus sends to the workers too (a session setting is not sent)
        self.distributed = citus.is_distributed(conn, settings)

    def child(self, job: Job) -> sql.Identifier:
        return sql.Identifier(self.settings.schema, job.partition)

    def parent(self) -> sql.Identifier:
        return sql.Identifier(self.settings.schema, self.settings.table)

    def job_spool(self, job: Job) -> Path:
        return self.table_spool / job.partition


def _has_default(ctx: _Ctx) -> bool:
    attached, _ = catalog.partition_names(ctx.conn, ctx.settings)
    return f"{ctx.settings.table}_default" in attached


def step_detach(ctx: _Ctx, job: Job) -> None:
    """Detach ``job``'s partition, holding the table lock (so pg_partman's retention and ``maintain``
    never act on it at the same time). An interrupted concurrent detach of any partition of the table
    is finished first: Postgres allows one pending detach per table."""

    def attempt() -> None:
        state = journal.relation_state(ctx.conn, ctx.settings, job.partition)
        if state == "attached" and ctx.distributed:
            with ctx.conn.transaction():
                citus.local_lock_budget(ctx.conn, ctx.settings)
                ctx.conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(ctx.parent(), ctx.child(job)))
        elif state == "attached":
            mode = sql.SQL("") if _has_default(ctx) else sql.SQL(" CONCURRENTLY")
            ctx.conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}{}").format(ctx.parent(), ctx.child(job), mode))
        elif state == "missing":
            raise CallvaultError(
                f"partition {job.partition} disappeared before it was archived (dropped by hand?): nothing "
                "callvault can archive; remove its journal row once you have checked"
            )

    with table_lock(ctx.conn, ctx.settings, f"detaching {job.partition}", logger=log):
        finalize_pending(ctx.conn, ctx.settings, logger=log)
        if journal.relation_state(ctx.conn, ctx.settings, job.partition) == "attached":
            retry_locks(
                attempt, f"detaching {job.partition}", lambda: lock_holders(ctx.conn, ctx.child(job)), logger=log
            )
        # a lock timeout in the second phase of DETACH CONCURRENTLY leaves it pending: finish it now
        finalize_pending(ctx.conn, ctx.settings, logger=log)
        if journal.relation_state(ctx.conn, ctx.settings, job.partition) == "missing":
            raise CallvaultError(
                f"partition {job.partition} disappeared before it was archived (dropped by hand?): nothing "
                "callvault can archive; remove its journal row once you have checked"
            )


def _source_fingerprints(
    ctx: _Ctx, job: Job, conn: Conn | None = None, algo: str = layout.MD5
) -> dict[str, Fingerprint]:
    """Per-tenant fingerprints of the detached table computed by Postgres (on ``conn``, default ctx's):
    for ``sums+hash`` the check sums only (the digest is DuckDB's, over the exported stream)."""
    return layout.pg_fingerprints(conn or ctx.conn, ctx.child(job), None, algo)


def _source_fingerprints_apart(ctx: _Ctx, job: Job, algo: str) -> dict[str, Fingerprint]:
    """:func:`_source_fingerprints` on a connection of its own (it runs beside the export)."""
    with connect(ctx.settings, autocommit=True) as conn:
        return _source_fingerprints(ctx, job, conn, algo)


def _merge_previous(ctx: _Ctx, job: Job) -> None:
    """A period archived before (and since restored, wholly or per tenant, into the hot table) is
    archived again as the union of both: the earlier archive's rows of every tenant that is in the
    table again are loaded back into the detached table (``ON CONFLICT DO NOTHING``: rows restored
    from it are already there), and tenants that are not keep their earlier objects. Manifests are
    merged, never overwritten. Done once per journal entry, in the transaction that records it."""
    if "merged" in job.state:
        return
    key = layout.manifest_key(ctx.tdir, ctx.interval, job.start)
    previous = Manifest.from_json(ctx.store.get_bytes(key)) if ctx.store.head(key) is not None else None
    if previous is None:
        job.state = {**job.state, "merged": [], "kept": {}}
        event(log, logging.DEBUG, "no earlier archive of the period", partition=job.partition)
        return
    from callvault.archive.load import insert_from_stage, stage

    present = {str(r[0]) for r in ctx.conn.execute(sql.SQL("SELECT DISTINCT tenant_id FROM {}").format(ctx.child(job)))}
    live = {t: e for t, e in previous.tenants.items() if not e.pruned_at}
    merge = sorted(t for t in live if t in present)
    kept = {t: e.to_dict() for t, e in previous.tenants.items() if t not in present}
    # one format per period: a re-archive keeps the first one (kept tenants' objects are in it)
    merged = replace(job, fmt=previous.fmt, state={**job.state, "merged": merge, "kept": kept})
    work = private.work_dir(ctx.spool, "merge")
    try:
        with ctx.conn.transaction():
            if merge:
                stage(ctx.conn, ctx.store, previous, merge, work)
                insert_from_stage(ctx.conn, ctx.child(job))
            journal.save(ctx.conn, ctx.settings, merged)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    job.fmt, job.state = merged.fmt, merged.state  # only once committed
    event(log, logging.INFO, "re-archive: merged the earlier archive of the period", partition=job.partition,
          merged_tenants=len(merge), kept_tenants=len(kept), format=job.fmt)  # fmt: skip
    event(log, logging.DEBUG, "re-archive tenants", partition=job.partition, merged=merge, kept=sorted(kept))


def step_export(ctx: _Ctx, job: Job) -> tuple[int, int]:
    """Export the detached table to the spool, one file set per tenant, and record the source
    fingerprints; returns (rows, bytes). A spool that cannot be written is :class:`StoreUnavailable`."""
    _merge_previous(ctx, job)
    base = ctx.job_spool(job)
    shutil.rmtree(base, ignore_errors=True)
    private.private_dir(base, "archive spool directory")
    files: dict[str, list[dict[str, object]]] = {}
    total_bytes = 0
    try:
        if job.fmt == "parquet":
            # One pass over the partition in C++ (ADBC), cut by tenant, while Postgres adds up the check
            # sums in its own backend on a second connection; the exporter's own sums over the Arrow
            # stream must equal them (the decoder checked against Postgres), and its digest is the source.
            with ThreadPoolExecutor(1) as pool:
                pending = pool.submit(_source_fingerprints_apart, ctx, job, layout.SUMS_HASH)
                exported = export.export_partition_parquet(
                    ctx.dsn, ctx.conn, ctx.child(job), lambda tenant: base / f"tenant_id={tenant}",
                    on_batch=ctx.progress.advance if ctx.progress else None,
                )  # fmt: skip
                postgres = pending.result()
            done, source = exported.files, exported.fingerprints
            for tenant in sorted(set(postgres) | set(source)):
                pg, ours = postgres.get(tenant), source.get(tenant)
                if pg is None or ours is None or pg.postgres_part() != ours.postgres_part():
                    raise CallvaultError(
                        f"export of {job.partition}: tenant {tenant}'s rows as exported "
                        f"({ours.rows if ours else 0} rows, sums {ours.check if ours else {}}) differ from what "
                        f"Postgres holds ({pg.rows if pg else 0} rows, sums {pg.check if pg else {}}); nothing was "
                        "uploaded. Is something writing into the detached table? The next run exports again"
                    )
        else:
            source = _source_fingerprints(ctx, job)
            done = {t: export.export_csv(ctx.conn, ctx.child(job), t, base / f"tenant_id={t}") for t in source}
        if set(done) != set(source):
            raise CallvaultError(
                f"export of {job.partition} found tenants {sorted(set(done) ^ set(source))} that the fingerprint "
                "did not (or the reverse): is something writing into the detached table?"
            )
        for tenant in source:
            out = done[tenant]
            if sum(f.rows for f in out) != source[tenant].rows:
                raise CallvaultError(
                    f"export of {job.partition} tenant {tenant} wrote {sum(f.rows for f in out)} rows but the "
                    f"table has {source[tenant].rows}: is something writing into the detached table?"
                )
            files[tenant] = [
                {"path": str(f.path), "part": f.part, "rows": f.rows, "size": f.size, "sha256": f.sha256} for f in out
            ]
            total_bytes += sum(f.size for f in out)
    except OSError as exc:
        shutil.rmtree(base, ignore_errors=True)
        raise StoreUnavailable(
            f"exporting {job.partition} to the spool directory {base} failed: {exc.strerror or exc}. Free space "
            f"there or point {SPOOL_ENV} elsewhere; the partition is kept and the next run retries"
        ) from exc
    except Exception as exc:  # the exporter's own connection (ADBC) or Arrow; Arrow's I/O errors are OSErrors
        if not isinstance(exc, _engine_errors()):
            raise
        shutil.rmtree(base, ignore_errors=True)
        raise _engine_failure(job, exc) from exc
    job.state = {**job.state, "source": {t: fp.to_dict() for t, fp in source.items()}, "files": files}
    return sum(fp.rows for fp in source.values()), total_bytes


def _engine_errors() -> tuple[type[BaseException], ...]:
    import adbc_driver_manager
    import pyarrow as pa

    return (adbc_driver_manager.Error, pa.ArrowException)


def _engine_failure(job: Job, exc: BaseException) -> CallvaultError:
    """An ADBC or Arrow failure of the export as callvault's error: a lost connection is 69 (the next
    run resumes), anything else names the partition (exit 1)."""
    import adbc_driver_manager

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, adbc_driver_manager.OperationalError):
        return DatabaseUnavailable(
            f"exporting {job.partition}: the exporter's database connection failed ({text}); the detached table "
            "is kept and the next run exports it again"
        )
    return CallvaultError(f"exporting {job.partition} failed: {text}; the detached table is kept")


def _spool_intact(job: Job) -> bool:
    for entries in job.state.get("files", {}).values():
        for f in entries:
            path = Path(f["path"])
            if not path.is_file() or path.stat().st_size != f["size"] or sha256_file(path) != f["sha256"]:
                return False
    return "files" in job.state


def _manifest(ctx: _Ctx, job: Job) -> Manifest:
    source = {t: Fingerprint.from_dict(fp) for t, fp in job.state["source"].items()}
    tenants = {}
    for tenant, entries in job.state["files"].items():
        objects = tuple(
            ObjectEntry(
                key=layout.data_key(ctx.tdir, tenant, ctx.interval, job.start, int(f["part"]), job.fmt),
                rows=int(f["rows"]), size=int(f["size"]), sha256=str(f["sha256"]),
            )
            for f in entries
        )  # fmt: skip
        tenants[tenant] = TenantEntry(fingerprint=source[tenant], objects=objects)
    for tenant, entry in job.state.get("kept", {}).items():  # archived before, not in the table again
        tenants[tenant] = TenantEntry.from_dict(entry)
    return Manifest(
        table=ctx.settings.qualified, partition=job.partition, interval=ctx.interval, start=job.start, end=job.end,
        fmt=job.fmt, tenants=tenants, created_at=job.state.get("exported_at", ""),
    )  # fmt: skip


def step_upload(ctx: _Ctx, job: Job) -> int:
    """Upload the exported objects not already in the store (same size and SHA-256), then the
    manifest; returns the bytes sent."""
    manifest = _manifest(ctx, job)
    sent = 0
    for tenant, entry in sorted(manifest.tenants.items()):
        if tenant not in job.state["files"]:
            continue  # kept from an earlier archive of the period: its objects are in the store already
        paths = {int(f["part"]): Path(f["path"]) for f in job.state["files"][tenant]}
        for obj in entry.objects:
            have = ctx.store.head(obj.key)
            if have is not None and have.size == obj.size and have.sha256 == obj.sha256:
                continue  # uploaded by an earlier, interrupted run: never a second copy
            part = int(obj.key.rsplit("part-", 1)[1].split(".")[0])
            ctx.store.put_file(obj.key, paths[part], obj.sha256)
            sent += obj.size
            if ctx.progress:
                ctx.progress.advance(0, obj.size)
            fault_point("upload-first-object")
    ctx.store.put_bytes(layout.manifest_key(ctx.tdir, ctx.interval, job.start), manifest.to_json())
    return sent


def step_verify(ctx: _Ctx, job: Job) -> None:
    """Read the objects back and check them against the manifest (:class:`ArchiveVerifyFailed` if not),
    then remove objects of the period the manifest does not list."""
    manifest = _manifest(ctx, job)
    work = private.work_dir(ctx.spool, "verify")
    try:
        verify_manifest(ctx.store, manifest, layout.manifest_key(ctx.tdir, ctx.interval, job.start), work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # Objects of this period that the verified manifest does not list (parts of an earlier archive of
    # the same tenant, temporary files of a killed upload) would be read twice by Hive readers.
    for tenant, entry in manifest.tenants.items():
        if not entry.pruned_at:
            prefix = layout.period_prefix(ctx.tdir, tenant, ctx.interval, job.start)
            gone = ctx.store.sweep(prefix, {o.key for o in entry.objects})
            if gone:
                event(log, logging.INFO, "swept store objects no manifest lists", partition=job.partition,
                      tenant=tenant, objects=len(gone))  # fmt: skip
                event(log, logging.DEBUG, "swept store objects", partition=job.partition, keys=gone)


def step_drop(ctx: _Ctx, job: Job) -> None:
    """Drop the detached table under the table lock, if it still holds exactly the rows archived
    (:class:`ArchiveVerifyFailed` if not: it is kept and archived again)."""
    expected = sum(int(fp["rows"]) for fp in job.state["source"].values())

    def attempt() -> None:
        with ctx.conn.transaction():
            if journal.relation_state(ctx.conn, ctx.settings, job.partition) == "missing":
                job.step = "dropped"
                journal.save(ctx.conn, ctx.settings, job)
                return
            row = ctx.conn.execute(sql.SQL("SELECT count(*) FROM {}").format(ctx.child(job))).fetchone()
            if row is None or int(row[0]) != expected:
                raise ArchiveVerifyFailed(
                    f"{job.partition} now has {row[0] if row else '?'} rows, {expected} were archived: rows were "
                    "written into the detached table after export. Not dropped; the next run archives it again"
                )
            ctx.conn.execute(sql.SQL("DROP TABLE {}").format(ctx.child(job)))
            job.step = "dropped"
            journal.save(ctx.conn, ctx.settings, job)  # same transaction as the DROP: both or neither

    with table_lock(ctx.conn, ctx.settings, f"dropping {job.partition}", logger=log):
        retry_locks(attempt, f"dropping {job.partition}", lambda: lock_holders(ctx.conn, ctx.child(job)), logger=log)
    shutil.rmtree(ctx.job_spool(job), ignore_errors=True)


# ---------------------------------------------------------------- the driver


class _Redo(Exception):
    """A step found its input gone and sends the job back to ``step`` (e.g. a lost spool: export again)."""

    def __init__(self, step: str) -> None:
        self.step = step


def _run_detach(ctx: _Ctx, job: Job) -> tuple[int | None, int | None]:
    step_detach(ctx, job)
    return None, None


def _size(ctx: _Ctx, job: Job) -> tuple[int | None, int]:
    """The partition's estimated rows (the planner's statistics) and its size on disk (heap + TOAST)."""
    row = ctx.conn.execute(
        "SELECT nullif(c.reltuples, -1)::bigint, pg_table_size(c.oid) FROM pg_class c WHERE c.oid = %s::regclass",
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
    sent = step_upload(ctx, job)
    if ctx.progress:
        ctx.progress.finish()
    return None, sent


def _spooled_bytes(job: Job) -> int:
    return sum(int(f["size"]) for entries in job.state.get("files", {}).values() for f in entries)


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
        job.step = "detached"  # export and upload again next run; the table is kept
        journal.save(ctx.conn, ctx.settings, job, error=f"verify: {exc}", bump=True)
        journal.log(ctx.conn, ctx.settings, job, "verify-failed", time.perf_counter() - t0, None, None, str(exc))
        raise
    return None, None


def _run_drop(ctx: _Ctx, job: Job) -> tuple[int | None, int | None]:
    step_drop(ctx, job)  # records "dropped" in the journal in the DROP's own transaction
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
    result.seconds = time.perf_counter() - t_all
    event(log, logging.INFO, "archived", partition=job.partition, rows=result.rows, bytes=result.bytes,
          seconds=result.seconds)  # fmt: skip
    return result


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
                        PartitionResult(job.partition, job.start, job.end, job.step, job.step, error=err, exit_code=75)
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
    elif code == 75:
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
        return 75, msg
    if isinstance(exc, psycopg.OperationalError) and (exc.sqlstate is None or exc.sqlstate.startswith(("08", "57"))):
        return 69, f"{msg} (the database connection was lost; the next run resumes)"
    return 1, msg


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
