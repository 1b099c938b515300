"""The five steps a partition walks in ``callvault archive``, one function each: ``detach -> export ->
upload -> verify -> drop`` (see :mod:`callvault.archive.pipeline` for the journal that drives them).
Every step first looks at the real state (catalog, spool files, store) and skips what is already done."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import psycopg
from psycopg import sql

from callvault import catalog, citus, private
from callvault.archive import export, journal, layout
from callvault.archive.faults import fault_point
from callvault.archive.journal import Job
from callvault.archive.layout import Fingerprint, Manifest, ObjectEntry, TenantEntry
from callvault.archive.location import (
    SPOOL_ENV,
)
from callvault.archive.progress import Sink, Tracker
from callvault.archive.store import Store, sha256_file
from callvault.archive.verify import verify_manifest
from callvault.config import Settings
from callvault.db import Conn, connect, resolve_dsn
from callvault.errors import (
    ArchiveVerifyFailed,
    CallvaultError,
    DatabaseUnavailable,
    StoreUnavailable,
)
from callvault.logs import event, get_logger
from callvault.maintain import (
    finalize_pending,
    lock_holders,
    retry_locks,
    table_lock,
)
from callvault.plan import Interval

log = get_logger("archive")


# ---------------------------------------------------------------- the steps


def table_spool(conn: Conn, settings: Settings, spool: Path) -> Path:
    """Where the table's partitions are exported before upload. The spool is shared by every database
    archived from this machine: each gets its own subtree, or two databases with the same table name would
    export into (and sweep) each other's files."""
    ident = f"{conn.info.host}:{conn.info.port}/{conn.info.dbname}"
    tag = f"{re.sub(r'[^A-Za-z0-9_]', '_', conn.info.dbname)[:40]}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"
    return spool / tag / layout.table_dir(settings.schema, settings.table)


class _Ctx:
    def __init__(self, conn: Conn, settings: Settings, store: Store, spool: Path, interval: Interval) -> None:
        self.conn = conn
        self.settings = settings
        self.store = store
        self.spool = spool
        self.interval = interval
        self.tdir = layout.table_dir(settings.schema, settings.table)
        self.dsn = resolve_dsn(settings)  # the exporter's own (ADBC) connection
        self.table_spool = table_spool(conn, settings, spool)
        self.progress: Tracker | None = None  # the partition being archived, when someone watches
        self.guard: DropGuard | None = None  # the drop's count, taken while upload and verify run
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
        # one backend: it has the whole export to finish in (~1 s of a core per 1M rows against ~4 s), and a
        # parallel worker would only take a core from the export and the application's writers meanwhile
        conn.execute("SET max_parallel_workers_per_gather = 0")
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
                stage(ctx.conn, ctx.store, previous, merge, work, shape=catalog.table_shape(ctx.conn, ctx.settings))
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
            # the manifest records what the objects hold, in order (pairs: jsonb would sort an object's keys)
            job.state = {**job.state, "columns": list(exported.columns.items())}
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
        columns=dict(map(tuple, job.state.get("columns") or layout.ARCHIVE_COLUMNS.items())),
    )  # fmt: skip


UPLOAD_THREADS = 8  # objects uploaded at once


def step_upload(ctx: _Ctx, job: Job) -> int:
    """Upload the exported objects not already in the store (same size and SHA-256), ``UPLOAD_THREADS``
    at a time, then the manifest; returns the bytes sent."""
    manifest = _manifest(ctx, job)
    todo: list[tuple[ObjectEntry, Path]] = []
    for tenant, entry in sorted(manifest.tenants.items()):
        if tenant not in job.state["files"]:
            continue  # kept from an earlier archive of the period: its objects are in the store already
        paths = {int(f["part"]): Path(f["path"]) for f in job.state["files"][tenant]}
        for obj in entry.objects:
            todo.append((obj, paths[int(obj.key.rsplit("part-", 1)[1].split(".")[0])]))

    def upload(item: tuple[ObjectEntry, Path]) -> int:
        obj, path = item
        have = ctx.store.head(obj.key)
        if have is not None and have.size == obj.size and have.sha256 == obj.sha256:
            return 0  # uploaded by an earlier, interrupted run: never a second copy
        ctx.store.put_file(obj.key, path, obj.sha256)
        fault_point("upload-first-object")
        return obj.size

    sent = 0
    # side by side: an object store's round trips (and a directory's fsyncs) overlap; at 1M rows and 200
    # tenants into a local directory 0.29-0.37 -> 0.24-0.28 s (fsyncs on one disk); more over a network
    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        for size in pool.map(upload, todo):
            sent += size
            if ctx.progress and size:
                ctx.progress.advance(0, size)
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
    _subject_filters(ctx, job)


def _subject_filters(ctx: _Ctx, job: Job) -> None:
    """The period's subject filters (callvault.privacy.index), while its table still exists. Best effort:
    an erase reads a period that has none, so a failure here only costs a later erase a read."""
    from callvault.privacy import index

    try:
        with ctx.conn.transaction():
            written = index.write_for_partition(ctx.conn, ctx.settings, ctx.store, ctx.child(job), ctx.interval,
                                                job.start)  # fmt: skip
        if written:
            event(log, logging.DEBUG, "subject filters written", partition=job.partition, tenants=written)
    except (psycopg.Error, CallvaultError, OSError) as exc:
        event(log, logging.WARNING, "subject filters not written; an erase will read this period",
              partition=job.partition, reason=type(exc).__name__)  # fmt: skip


class DropGuard:
    """The drop's row count taken ahead, while upload and verify run: a connection of its own locks the
    detached table in SHARE mode (reads go on; no row can be written into it until the drop) and counts
    its rows. The drop then upgrades that lock and drops in the guard's transaction, with no count of
    its own on the critical path (0.2-0.33 s of a 1M-row partition's archive). A guard that could not
    lock or count (or a run resumed after upload, which has none) leaves the drop to lock and count.
    A writer that writes into the detached table by name meanwhile waits, and gets an error once the table
    is dropped (before, its rows were found by the drop's count and the table archived again)."""

    def __init__(self, settings: Settings, table: sql.Identifier, name: str) -> None:
        self.table, self.name = table, name
        self.conn: Conn | None = None
        self.rows: int | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="callvault-drop-guard")
        self._counted = self._pool.submit(self._count, settings)

    def _count(self, settings: Settings) -> None:
        try:
            self.conn = connect(settings)
            self.conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{settings.lock_timeout_ms}ms",))
            self.conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")  # see step_drop
            self.conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(self.table))
            row = self.conn.execute(sql.SQL("SELECT count(*) FROM {}").format(self.table)).fetchone()
            self.rows = int(row[0]) if row else None
        except (psycopg.Error, CallvaultError) as exc:  # the drop counts itself
            event(log, logging.DEBUG, "drop guard not taken", partition=self.name,
                  reason=type(exc).__name__)  # fmt: skip
            self.rows = None

    def counted(self) -> int | None:
        """The rows counted under the lock (waiting for the count), or None without a lock."""
        self._counted.result()
        return self.rows

    def close(self) -> None:
        """Release the lock (a rollback, unless the drop committed) and the connection."""
        self._counted.result()
        self._pool.shutdown()
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                self.conn.close()  # an open transaction is rolled back
            self.conn = None


def start_drop_guard(ctx: _Ctx, job: Job) -> None:
    """Start the drop's :class:`DropGuard` for ``job`` (closing any earlier one). Not on Citus, whose
    lock on a distributed table is one on every shard, held across the upload: the drop counts there."""
    close_drop_guard(ctx)
    if not ctx.distributed:
        ctx.guard = DropGuard(ctx.settings, ctx.child(job), job.partition)


def close_drop_guard(ctx: _Ctx) -> None:
    if ctx.guard is not None:
        ctx.guard.close()
        ctx.guard = None


def _refuse_drop(job: Job, rows: object, expected: int) -> ArchiveVerifyFailed:
    return ArchiveVerifyFailed(
        f"{job.partition} now has {rows} rows, {expected} were archived: rows were written into the detached "
        "table after export. Not dropped; the next run archives it again"
    )


def _drop_guarded(ctx: _Ctx, job: Job, expected: int) -> bool:
    """The drop in the guard's transaction (its SHARE lock held since before upload); False when there is
    no guard, or its lock could not be upgraded in time (the caller drops the usual way)."""
    guard, ctx.guard = ctx.guard, None
    if guard is None:
        return False
    try:
        rows = guard.counted()
        if rows is None or guard.conn is None:
            return False
        if rows != expected:
            raise _refuse_drop(job, rows, expected)
        try:
            guard.conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(ctx.child(job)))
            guard.conn.execute(sql.SQL("DROP TABLE {}").format(ctx.child(job)))
            # same transaction as the DROP: both or neither
            journal.save(guard.conn, ctx.settings, replace(job, step="dropped"))
            guard.conn.commit()
        except psycopg.Error:
            # readers held the table past lock_timeout, the server ended the idle session
            # (idle_in_transaction_session_timeout), the DROP itself failed: the usual way retries (and
            # says why, if it fails too)
            return False
        job.step = "dropped"
        return True
    finally:
        guard.close()


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
            # no writer may add a row between the count and the DROP (the count's snapshot would not see it)
            ctx.conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(ctx.child(job)))
            # one backend: a parallel index-only count of 1M rows took 0.4 s against 0.16-0.22 s without
            # (the workers' start and their visibility-map checks), and a worker takes a core from the
            # application's writers
            ctx.conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
            row = ctx.conn.execute(sql.SQL("SELECT count(*) FROM {}").format(ctx.child(job))).fetchone()
            if row is None or int(row[0]) != expected:
                raise _refuse_drop(job, row[0] if row else "?", expected)
            ctx.conn.execute(sql.SQL("DROP TABLE {}").format(ctx.child(job)))
            job.step = "dropped"
            journal.save(ctx.conn, ctx.settings, job)  # same transaction as the DROP: both or neither

    with table_lock(ctx.conn, ctx.settings, f"dropping {job.partition}", logger=log):
        if not _drop_guarded(ctx, job, expected):
            retry_locks(attempt, f"dropping {job.partition}", lambda: lock_holders(ctx.conn, ctx.child(job)),
                        logger=log)  # fmt: skip
    shutil.rmtree(ctx.job_spool(job), ignore_errors=True)
