"""``callvault erase``: remove a tenant's calls, one subject's calls or given calls from every tier.

A request is journaled in ``callvault.erasures`` and walks four steps, each idempotent, each committed
before the next begins, so a run killed at any point is finished by ``callvault erase resume``:

1. **hot** -- ``DELETE`` from the attached partitions, pinned to the tenant (and, for a subject, through
   the subject index). Mirrors and publications receive the deletes by logical replication.
2. **detached** -- from partitions detached but not yet archived (their tables still exist). A partition
   already exported to the spool is sent back to ``detached`` in the archive journal and its spool files
   deleted, so the next archive run exports it again without the erased rows.
3. **quarantine** -- quarantined rows of the tenant whose faithful copy names the subject or a call id
   (for a whole tenant: every row naming the tenant).
4. **archive** -- in every store the journal recorded, each archived period of the tenant: its objects
   are read (size and SHA-256 checked), the rows to erase found with DuckDB; an object holding any is
   rewritten without them (Arrow, the archive's own schema and zstd), its fingerprint recomputed and
   checked against the old objects minus the erased rows, uploaded, read back, the manifest updated, and
   the old objects deleted -- every version of them in a versioned S3 bucket. The keys to delete are
   journaled before the manifest changes, so a kill between the two still deletes them.

While it runs the request holds the subject or the call ids (to resume); once done they are cleared:
the receipt (``erase status ID``) says what was removed from each tier, when and by whom, and holds no
call content and no subject. A legal hold on the tenant or the subject refuses the request
(:mod:`callvault.privacy.holds`). The archive steps take the archive's lock: an archive run and an
erasure never work on one table at once.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from callvault import catalog, locks, usage, waits
from callvault.archive import journal, layout
from callvault.archive.layout import Manifest, ObjectEntry, TenantEntry
from callvault.archive.location import default_spool, recorded_stores
from callvault.archive.store import Store, open_store, sha256_file
from callvault.archive.verify import _fetch, duck_fingerprints
from callvault.config import META_SCHEMA, Settings
from callvault.db import Conn, connect
from callvault.errors import ArchiveVerifyFailed, Blocked, CallvaultError, InvalidSetting
from callvault.logs import event, get_logger
from callvault.privacy import holds
from callvault.privacy import subject as subjects
from callvault.tenancy import tenant as as_tenant
from callvault.tenancy.ids import tenant_value, uuid_text

log = get_logger(__name__)

ERASURES = sql.Identifier(META_SCHEMA, "erasures")
QUARANTINE = sql.Identifier(META_SCHEMA, "quarantine")
STEPS = ("hot", "detached", "quarantine", "archive", "done")
MIRROR_WAIT_S = 30.0  # how long the last step waits for mirrors to confirm the deletes
_COLUMNS = (
    "id, parent_table, tenant_id::text, kind, step, counts, requested_by, created_at, updated_at, finished_at, error"
)


@dataclass(frozen=True)
class Receipt:
    """An erasure request as ``erase status`` shows it: no subject, no call content."""

    id: str
    table: str
    tenant_id: str
    kind: str
    step: str
    counts: dict[str, int]
    requested_by: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    error: str | None

    @property
    def done(self) -> bool:
        """Whether every tier was handled."""
        return self.step == "done"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready (``erase status --json``): ``removed`` counts rows and objects per tier."""
        return {
            "id": self.id, "table": self.table, "tenant_id": self.tenant_id, "kind": self.kind, "step": self.step,
            "done": self.done, "removed": self.counts, "requested_by": self.requested_by,
            "created_at": self.created_at.isoformat(), "updated_at": self.updated_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None, "error": self.error,
        }  # fmt: skip


@dataclass
class _Request:
    id: str
    tenant: str
    kind: str
    selector: dict[str, Any]
    step: str
    counts: dict[str, int]
    state: dict[str, Any]


def request_id(text: str) -> str:
    """A request id as canonical UUID text, or InvalidSetting naming it."""
    return uuid_text(text, "erase request", "the id `callvault erase` printed")


def erase(
    settings: Settings, tenant_id: str | uuid.UUID, *, subject: str | None = None, call_ids: list[str] | None = None,
    all_calls: bool = False, store_url: str | None = None,
) -> Receipt:  # fmt: skip
    """Erase one subject's calls (``subject``), given calls (``call_ids``) or every call (``all_calls``) of
    a tenant, from every tier; returns the receipt. See the module docstring.

    :raises InvalidSetting: not exactly one of subject / call_ids / all_calls, a bad id, no subject set, or
        nothing of that tenant or subject anywhere (exit code 2).
    :raises HoldRefused: a legal hold covers the data (exit code 77).
    :raises AlreadyRunning: an archive run holds the table (exit code 75): ``erase resume`` finishes it.
    :raises StoreUnavailable: an archive store cannot be read or written (exit code 69): resume finishes it.
    """
    chosen = [k for k, v in (("subject", subject), ("calls", call_ids), ("tenant", all_calls)) if v]
    if len(chosen) != 1:
        raise InvalidSetting(
            "say what to erase, exactly one of: --subject VALUE (one caller), --call-id ID (repeatable), or "
            "--all-calls --yes (every call of the tenant)"
        )
    kind = chosen[0]
    tenant = tenant_value(tenant_id)
    selector: dict[str, Any] = {}
    with connect(settings, autocommit=True) as conn:
        subjects.ensure(conn)
        journal.ensure_tables(conn)
        if kind == "subject":
            assert subject is not None
            if not subject.strip():
                raise InvalidSetting("--subject is empty: give the subject's value as it appears in metadata")
            subjects.require(conn, settings)
            selector = {"subject": subject}
        elif kind == "calls":
            assert call_ids is not None
            selector = {"calls": sorted({uuid_text(c, "call", "the call_id it was written with") for c in call_ids})}
        holds.refuse_if_held(conn, settings, tenant, "erase", subject if kind == "subject" else None)
        req = _Request(str(uuid.uuid4()), tenant, kind, selector, "hot", {}, {})
        if not _anything(conn, settings, _Request(req.id, tenant, "tenant", {}, "hot", {}, {}), store_url):
            raise InvalidSetting(
                f"tenant {tenant} has no calls in {settings.qualified}: nothing found in the hot table, partitions "
                "awaiting archive, the quarantine or the archive; check the tenant id"
            )
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (id, parent_table, tenant_id, kind, selector, step, requested_by) "
                "VALUES (%s, %s, %s, %s, %s, 'hot', %s)"
            ).format(ERASURES),
            (req.id, settings.qualified, tenant, kind, Jsonb(selector), holds.who()),
        )
    event(log, logging.INFO, "erase requested", table=settings.qualified, request=req.id, kind=kind)
    receipt = _run(settings, req, store_url)
    if not any(v for k, v in receipt.counts.items() if k.endswith("_rows")):
        what = {"subject": "that subject", "calls": "those calls", "tenant": "calls"}[kind]
        raise InvalidSetting(
            f"tenant {tenant} has no {what} in {settings.qualified}: nothing found in the hot table, partitions "
            f"awaiting archive, the quarantine or the archive (request {req.id} removed nothing); check the value "
            "(an erased subject is not found again)"
        )
    return receipt


def resume(settings: Settings, request: str | None = None, *, store_url: str | None = None) -> list[Receipt]:
    """Finish unfinished requests (one, or every one of the table); returns their receipts."""
    with connect(settings, autocommit=True) as conn:
        subjects.ensure(conn)
        where = sql.SQL("AND id = %s") if request else sql.SQL("AND step <> 'done'")
        params: tuple[Any, ...] = (settings.qualified, request_id(request)) if request else (settings.qualified,)
        rows = conn.execute(
            sql.SQL(
                "SELECT id::text, tenant_id::text, kind, selector, step, counts, state FROM {} "
                "WHERE parent_table = %s {} ORDER BY created_at"
            ).format(ERASURES, where),
            params,
        ).fetchall()
    if request and not rows:
        raise InvalidSetting(
            f"erase request {request} does not exist for {settings.qualified}: see `callvault erase list`"
        )
    return [_run(settings, _Request(r[0], r[1], r[2], dict(r[3] or {}), r[4], dict(r[5]), dict(r[6])), store_url)
            for r in rows]  # fmt: skip


def status(settings: Settings, request: str) -> Receipt:
    """The receipt of erase request ``request`` (InvalidSetting when malformed or unknown)."""
    rid = request_id(request)
    with connect(settings, autocommit=True) as conn:
        subjects.ensure(conn)
        row = conn.execute(
            sql.SQL("SELECT {} FROM {} WHERE id = %s AND parent_table = %s").format(sql.SQL(_COLUMNS), ERASURES),
            (rid, settings.qualified),
        ).fetchone()
    if row is None:
        raise InvalidSetting(
            f"erase request {request} does not exist for {settings.qualified}: see `callvault erase list`"
        )
    return _receipt(row)


def requests(settings: Settings) -> list[Receipt]:
    """Every erasure request of the table, newest first (``erase list``)."""
    with connect(settings, autocommit=True) as conn:
        subjects.ensure(conn)
        rows = conn.execute(
            sql.SQL("SELECT {} FROM {} WHERE parent_table = %s ORDER BY created_at DESC").format(
                sql.SQL(_COLUMNS), ERASURES
            ),
            (settings.qualified,),
        ).fetchall()
    return [_receipt(r) for r in rows]


def _unknown(settings: Settings, request: str) -> InvalidSetting:
    return InvalidSetting(
        f"erase request {request} does not exist for {settings.qualified}: see `callvault erase list`"
    )


def _receipt(row: tuple[Any, ...]) -> Receipt:
    rid, table, tenant, kind, step, counts, by, created, updated, finished, error = row
    return Receipt(str(rid), table, tenant, kind, step, {k: int(v) for k, v in dict(counts).items()}, by, created,
                   updated, finished, error)  # fmt: skip


# -- matching -------------------------------------------------------------------------------------------
def _pg_match(conn: Conn, settings: Settings, req: _Request) -> tuple[sql.Composable, dict[str, Any]]:
    params: dict[str, Any] = {"tenant": req.tenant}
    match: sql.Composable = sql.SQL("tenant_id = %(tenant)s")
    if req.kind == "subject":
        match = sql.SQL("tenant_id = %(tenant)s AND {} = %(subject)s").format(subjects.require(conn, settings).pg())
        params["subject"] = req.selector["subject"]
    elif req.kind == "calls":
        match = sql.SQL("tenant_id = %(tenant)s AND call_id = ANY(%(calls)s::uuid[])")
        params["calls"] = req.selector["calls"]
    return match, params


def _duck_match(conn: Conn, settings: Settings, req: _Request) -> tuple[str, dict[str, Any]]:
    """The rows to erase in a tenant's archived objects, as a DuckDB predicate and its named parameters."""
    if req.kind == "subject":
        return f"{subjects.require(conn, settings).duck()} = $subject", {"subject": req.selector["subject"]}
    if req.kind == "calls":
        return "CAST(call_id AS VARCHAR) IN (SELECT unnest($calls::VARCHAR[]))", {"calls": req.selector["calls"]}
    return "TRUE", {}


def _quarantine_match(req: _Request) -> tuple[sql.Composable, list[Any]]:
    """Quarantined rows are faithful copies of what was sent (not always valid rows): a row belongs to the
    request when its copy names the tenant and, for a subject or calls, one of the values."""
    target = sql.SQL("target_table = %s AND strpos(raw, %s) > 0")
    if req.kind == "tenant":
        return target, [req.tenant]
    values = [req.selector["subject"]] if req.kind == "subject" else list(req.selector["calls"])
    return sql.SQL("{} AND EXISTS (SELECT 1 FROM unnest(%s::text[]) v WHERE strpos(raw, v) > 0)").format(target), [
        req.tenant, values,
    ]  # fmt: skip


def _anything(conn: Conn, settings: Settings, req: _Request, store_url: str | None) -> bool:
    """Whether any tier holds something of the request (an unknown tenant or subject is refused)."""
    match, params = _pg_match(conn, settings, req)
    with as_tenant(conn, req.tenant):
        if conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {})").format(_parent(settings), match),
                        params).fetchone() == (True,):  # fmt: skip
            return True
        for table in _detached_tables(conn, settings):
            found = conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {})").format(table, match), params)
            if found.fetchone() == (True,):
                return True
    qmatch, qparams = _quarantine_match(req)
    row = conn.execute(
        sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {})").format(QUARANTINE, qmatch),
        [settings.qualified, *qparams],
    ).fetchone()
    if row == (True,):
        return True
    return any(req.tenant in m.tenants for store in _stores(settings, store_url) for m in _manifests(store, settings))


# -- the steps ------------------------------------------------------------------------------------------
def _parent(settings: Settings) -> sql.Identifier:
    return sql.Identifier(settings.schema, settings.table)


def _detached_tables(conn: Conn, settings: Settings) -> list[sql.Identifier]:
    """Partitions detached and not yet dropped (by retention or by the archive, archived or not)."""
    return [sql.Identifier(settings.schema, name) for name, _ in catalog.list_detached(conn, settings)]


def _save(conn: Conn, req: _Request, step: str, *, done: bool = False) -> None:
    selector = None if done else Jsonb(req.selector)
    conn.execute(
        sql.SQL(
            "UPDATE {} SET step = %s, counts = %s, state = %s, selector = %s, updated_at = now(), error = NULL, "
            "finished_at = CASE WHEN %s THEN now() END WHERE id = %s"
        ).format(ERASURES),
        (step, Jsonb(req.counts), Jsonb(req.state), selector, done, req.id),
    )
    req.step = step


def _run(settings: Settings, req: _Request, store_url: str | None) -> Receipt:
    try:
        with connect(settings, autocommit=True) as conn:
            if req.step == "hot":
                _hot(conn, settings, req)
            if req.step in ("detached", "quarantine", "archive"):
                key = locks.acquire(
                    conn, settings, "archive",
                    f"an archive run for {settings.qualified} is in progress; run `callvault erase resume "
                    f"{req.id}` when it is done",
                )  # fmt: skip
                try:
                    if req.step == "detached":
                        _detached(conn, settings, req)
                    if req.step == "quarantine":
                        _quarantine(conn, settings, req)
                    if req.step == "archive":
                        _archive(conn, settings, req, store_url)
                finally:
                    locks.release(conn, key)
    except CallvaultError as exc:
        _failed(settings, req, str(exc))
        raise
    event(log, logging.INFO, "erase done", table=settings.qualified, request=req.id, **req.counts)
    return status(settings, req.id)


def _failed(settings: Settings, req: _Request, error: str) -> None:
    try:
        with connect(settings, autocommit=True) as conn:
            conn.execute(sql.SQL("UPDATE {} SET error = %s, updated_at = now() WHERE id = %s").format(ERASURES),
                         (error.splitlines()[0][:500] if error else None, req.id))  # fmt: skip
    except Exception as exc:  # never hide the request's own error
        event(log, logging.WARNING, "erase error not recorded", request=req.id, reason=type(exc).__name__)


def _hot(conn: Conn, settings: Settings, req: _Request) -> None:
    match, params = _pg_match(conn, settings, req)
    with conn.transaction(), as_tenant(conn, req.tenant):
        gone = conn.execute(sql.SQL("DELETE FROM {} WHERE {}").format(_parent(settings), match), params).rowcount
        req.counts["hot_rows"] = req.counts.get("hot_rows", 0) + gone
        _save(conn, req, "detached")
    # where the deletes end in the WAL: each mirror has them once its subscription confirms this far
    req.state["delete_lsn"] = str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0])  # type: ignore[index]
    _save(conn, req, "detached")


def _detached(conn: Conn, settings: Settings, req: _Request) -> None:
    match, params = _pg_match(conn, settings, req)
    spool: Path | None = None
    with conn.transaction():
        jobs = {job.partition: job for job in journal.load(conn, settings).values()}
        counted = _usage_counted(conn, settings)
        for name, _ in catalog.list_detached(conn, settings):
            with as_tenant(conn, req.tenant):
                table = sql.Identifier(settings.schema, name)
                if counted:  # the parent's usage triggers do not see a detached partition: subtract here
                    for stmt in usage.subtract_sql(settings, usage.dimension_of(conn, settings), table, match):
                        conn.execute(stmt, params)
                gone = conn.execute(sql.SQL("DELETE FROM {} WHERE {}").format(table, match), params).rowcount
            req.counts["detached_rows"] = req.counts.get("detached_rows", 0) + gone
            job = jobs.get(name)
            if gone and job is not None and job.step in ("exported", "uploaded"):  # the spool has the rows
                journal.save(conn, settings, replace(job, step="detached", state={}))
                from callvault.archive.steps import table_spool

                spool = table_spool(conn, settings, default_spool(settings))
                shutil.rmtree(spool / job.partition, ignore_errors=True)
                req.counts["spool_partitions_reset"] = req.counts.get("spool_partitions_reset", 0) + 1
        _save(conn, req, "quarantine")


def _usage_counted(conn: Conn, settings: Settings) -> bool:
    """Whether the table keeps a usage rollup (an erasure outside the parent must adjust it)."""
    have_table, triggers, _ = usage.state(conn, settings)
    return have_table and triggers > 0


def _quarantine(conn: Conn, settings: Settings, req: _Request) -> None:
    match, params = _quarantine_match(req)
    with conn.transaction():
        gone = conn.execute(sql.SQL("DELETE FROM {} WHERE {}").format(QUARANTINE, match),
                            [settings.qualified, *params]).rowcount  # fmt: skip
        req.counts["quarantine_rows"] = req.counts.get("quarantine_rows", 0) + gone
        _save(conn, req, "archive")


def _stores(settings: Settings, store_url: str | None) -> list[Store]:
    """Every store the archive journal recorded (an archive split across stores is erased in each), and
    ``store_url`` too when given."""
    urls = set(recorded_stores(settings) or {}) | ({store_url} if store_url else set())
    return [open_store(u) for u in sorted(urls)]


def _manifests(store: Store, settings: Settings) -> Iterator[Manifest]:
    prefix = layout.manifests_prefix(layout.table_dir(settings.schema, settings.table))
    if store.head(prefix) is None and not any(True for _ in store.iter_objects(prefix)):
        return
    for obj in list(store.iter_objects(prefix)):
        if obj.key.endswith(".json"):
            yield Manifest.from_json(store.get_bytes(obj.key))


def _archive(conn: Conn, settings: Settings, req: _Request, store_url: str | None) -> None:
    from callvault.privacy import index

    predicate, args = _duck_match(conn, settings, req)
    secret = index.key(conn, settings) if req.kind == "subject" else None
    for store in _stores(settings, store_url):
        _purge_pending(conn, store, req)
        for manifest in _manifests(store, settings):
            entry = manifest.tenants.get(req.tenant)
            if entry is None or entry.pruned_at:
                continue
            if req.kind == "subject" and not index.may_hold(
                store, settings, secret, manifest.interval, manifest.start, req.tenant, req.selector["subject"]
            ):  # its filter says the subject is certainly not there: not read
                req.counts["archive_periods_skipped"] = req.counts.get("archive_periods_skipped", 0) + 1
                continue
            _erase_period(conn, settings, store, manifest, entry, req, predicate, args)
            _purge_pending(conn, store, req)
    req.state.pop("purge", None)
    _mirrors_confirm(conn, settings, req)
    with conn.transaction():
        _save(conn, req, "done", done=True)


def _lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def _mirrors_confirm(conn: Conn, settings: Settings, req: _Request) -> None:
    """Wait (up to MIRROR_WAIT_S) until every callvault mirror's subscription has confirmed the WAL past the
    hot deletes: the targets applied them. A mirror that does not (down, or lagging) leaves the request
    open (exit 75): ``erase resume`` checks again; nothing is undone meanwhile."""
    lsn = req.state.get("delete_lsn")
    if not lsn:
        return
    deadline = time.monotonic() + MIRROR_WAIT_S
    ours = (
        "SELECT slot_name, confirmed_flush_lsn FROM pg_replication_slots WHERE slot_type = 'logical' "
        "AND database = current_database() AND slot_name IN (SELECT pubname FROM pg_publication_tables "
        "WHERE pubname LIKE 'callvault\\_mirror\\_%%' AND schemaname = %s AND tablename = %s) ORDER BY 1"
    )
    while True:
        found = conn.execute(ours, (settings.schema, settings.table)).fetchall()
        behind = [str(name) for name, flushed in found if flushed is None or _lsn(str(flushed)) < _lsn(lsn)]
        if not behind:
            req.counts["mirrors_confirmed"] = len(found)
            return
        if time.monotonic() >= deadline:
            raise Blocked(
                f"erase request {req.id}: every tier of this database is erased, but mirror slot(s) "
                f"{', '.join(behind)} have not confirmed the deletes after {MIRROR_WAIT_S:.0f} s (a target down "
                f"or lagging: see `callvault mirror status`); run `callvault erase resume {req.id}` when it is back"
            )
        waits.sleep(0.5)


def _purge_pending(conn: Conn, store: Store, req: _Request) -> None:
    """Delete (every version of) the old objects a finished rewrite left to delete, then forget them."""
    keys = list(req.state.get("purge", {}).get(store.url, []))
    if not keys:
        return
    store.purge(keys)
    req.counts["archive_objects_deleted"] = req.counts.get("archive_objects_deleted", 0) + len(keys)
    req.state.setdefault("purge", {})[store.url] = []
    _save(conn, req, "archive")


@contextmanager
def _workdir(settings: Settings) -> Iterator[Path]:
    base = default_spool(settings)
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = Path(tempfile.mkdtemp(prefix="erase-", dir=base))  # mkdtemp: 0700, the owner's only
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _erase_period(
    conn: Conn, settings: Settings, store: Store, manifest: Manifest, entry: TenantEntry, req: _Request,
    predicate: str, args: dict[str, Any],
) -> None:  # fmt: skip
    import duckdb
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    tdir = layout.table_dir(settings.schema, settings.table)
    mkey = layout.manifest_key(tdir, manifest.interval, manifest.start)
    with _workdir(settings) as work:
        fetched: list[Path] = []
        files = _fetch(store, entry, work, fetched)  # size and SHA-256 checked
        req.counts["archive_objects_read"] = req.counts.get("archive_objects_read", 0) + len(files)
        if manifest.fmt != "parquet":
            raise CallvaultError(
                f"erase from {store.url}: the {manifest.period} archive is {manifest.fmt}; erasing rows from "
                "CSV archives is not supported (archive with the default Parquet format); nothing was changed there"
            )
        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            paths = [str(p) for p in files]
            found = con.execute(
                f"SELECT id FROM read_parquet($files, hive_partitioning = false) WHERE {predicate}",
                {"files": paths, **args},
            ).fetchall()
            if not found:
                return
            erased_ids = [int(r[0]) for r in found]
            dim = usage.dimension_of(conn, settings)
            dim_expr = f"coalesce({dim.duck()}, '')" if dim is not None else "''"
            deltas: list[usage.Delta] = [
                (req.tenant, hour, str(value), -int(n), -int(secs or 0))
                for hour, value, n, secs in con.execute(
                    f"SELECT date_trunc('hour', started_at::TIMESTAMPTZ), {dim_expr}, count(*), "
                    f"sum(coalesce(duration_sec, 0))::BIGINT FROM read_parquet($files, hive_partitioning = false) "
                    f"WHERE {predicate} GROUP BY 1, 2",
                    {"files": paths, **args},
                ).fetchall()
            ]
            table = pa.concat_tables([pq.read_table(p) for p in paths])
            kept = table.filter(pc.invert(pc.is_in(table["id"], value_set=_int_array(erased_ids))))
            changed = dict(manifest.tenants)
            new_entry: TenantEntry | None = None
            if kept.num_rows:
                path = work / "erased.parquet"
                pq.write_table(kept, path, compression="zstd", write_statistics=True)
                want = duck_fingerprints({"t": [Path(p) for p in paths]}, "parquet", con, layout.SUMS_HASH,
                                         where=f"NOT ({predicate})", params=args)  # fmt: skip
                got = duck_fingerprints({"t": [path]}, "parquet", con, layout.SUMS_HASH)
                if want.get("t") != got.get("t"):
                    raise ArchiveVerifyFailed(
                        f"erase: the rewritten {manifest.period} object of tenant {req.tenant} does not match the "
                        "old objects minus the erased rows; nothing was changed in the archive"
                    )
                key = f"{layout.period_prefix(tdir, req.tenant, manifest.interval, manifest.start)}/" \
                      f"part-00000-e{req.id[:8]}.parquet"  # fmt: skip
                digest = sha256_file(path)
                info = store.put_file(key, path, digest)
                back = store.head(key)
                if back is None or back.size != info.size:
                    raise ArchiveVerifyFailed(f"erase: {key} in {store.url} did not read back after upload")
                new_entry = TenantEntry(got["t"], (ObjectEntry(key, kept.num_rows, info.size, digest),))
                changed[req.tenant] = new_entry
            else:
                del changed[req.tenant]
        finally:
            con.close()
    old_keys = [o.key for o in entry.objects if new_entry is None or o.key not in {n.key for n in new_entry.objects}]
    purge = req.state.setdefault("purge", {})
    purge[store.url] = sorted(set(purge.get(store.url, [])) | set(old_keys))
    req.counts["archive_rows"] = req.counts.get("archive_rows", 0) + len(erased_ids)
    req.counts["archive_objects_rewritten"] = req.counts.get("archive_objects_rewritten", 0) + (1 if new_entry else 0)
    req.counts["archive_periods"] = req.counts.get("archive_periods", 0) + 1
    with conn.transaction():  # the usage of the erased calls goes with them, once per period (resumable)
        done = req.state.setdefault("usage_adjusted", [])
        if mkey not in done:
            if _usage_counted(conn, settings):
                usage.apply(conn, settings, deltas)
            done.append(mkey)
        _save(conn, req, "archive")  # the old keys are journaled before the manifest stops naming them
    store.put_bytes(mkey, replace(manifest, tenants=changed).to_json())
    event(log, logging.INFO, "erase: archived period rewritten", request=req.id, period=manifest.period,
          rows=len(erased_ids), store=store.url)  # fmt: skip


def _int_array(values: list[int]) -> Any:
    import pyarrow as pa

    return pa.array(values, type=pa.int64())
