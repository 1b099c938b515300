"""What the sync and async writers share: batches, counts, SQL, and how to read an error.

Nothing here does I/O. The two writers differ only in how they wait (threads vs asyncio).
"""

from __future__ import annotations

import json
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors as pgerr
from psycopg import sql
from psycopg.abc import Buffer
from psycopg.adapt import Dumper
from psycopg.pq import Format

from callvault import columns
from callvault.config import META_SCHEMA, Settings
from callvault.errors import WriterError
from callvault.ingest import rawform
from callvault.ingest.validate import COLUMNS, PG_TYPES, LiveRange, Rejected, Row
from callvault.logs import event, get_logger

STAGE = "_callvault_stage"
DURABLE = sql.SQL(
    "SET LOCAL synchronous_commit TO on"
)  # flush() means durable, whatever the pool/role sets  # per-session temporary table for the idempotent path
JSONB_OID = 3802


class JsonBytes(bytes):
    """Marker type: metadata already serialised by validation (compact UTF-8 JSON)."""


class PreEncodedJsonbDumper(Dumper):
    """Binary jsonb from bytes validation already produced: no second json.dumps on the hot path."""

    format = Format.BINARY
    oid = JSONB_OID

    def dump(self, obj: bytes) -> Buffer:
        return b"\x01" + obj  # jsonb binary format: version byte 1, then the JSON text


def prepare_connection(conn: psycopg.Connection[object] | psycopg.AsyncConnection[object]) -> None:
    """Make COPY's ``set_types(['jsonb'])`` pick the pre-encoded dumper on this connection."""
    conn.adapters.register_dumper(JsonBytes, PreEncodedJsonbDumper)


@dataclass
class Batch:
    rows: list[Row] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    idempotent: bool = False  # use the staging path from the start (replay, retries)
    shape: columns.Shape = columns.BASE  # the table's columns the rows carry (extras after the seed's)

    def __len__(self) -> int:
        return len(self.rows) + len(self.rejected)


@dataclass
class FlushResult:
    """Counts of rows that reached a durable state: committed, skipped as duplicates, or quarantined."""

    written: int = 0
    duplicates: int = 0
    quarantined: int = 0
    batches: int = 0
    fallbacks: int = 0  # batches that needed the idempotent staging path
    retries: int = 0  # batches re-sent after a connection failure
    # the rows this batch quarantined (not summed by add(); the writers hand them to logging and on_quarantine)
    rejected: list[Rejected] = field(default_factory=list, compare=False, repr=False)

    _FIELDS = ("written", "duplicates", "quarantined", "batches", "fallbacks", "retries")

    def add(self, other: FlushResult) -> None:
        """Add ``other``'s counts to these (in place)."""
        for name in self._FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def minus(self, other: FlushResult) -> FlushResult:
        """These counts less ``other``'s (a new result)."""
        return FlushResult(**{n: getattr(self, n) - getattr(other, n) for n in self._FIELDS})

    def copy(self) -> FlushResult:
        """A copy of the counts."""
        out = FlushResult()
        out.add(self)
        return out


@dataclass(frozen=True)
class QuarantineEvent:
    """One row the writer set aside, as ``on_quarantine`` receives it: who and why, never the content
    (no transcript, no metadata). ``tenant_id``/``call_id`` are the producer's values as text (``None``
    when the row had none); the row itself is in ``callvault.quarantine`` (see ``quarantine list``)."""

    tenant_id: str | None
    call_id: str | None
    reason: str


def quarantine_events(rejected: list[Rejected]) -> list[QuarantineEvent]:
    """The events of quarantined rows (pure)."""
    out = []
    for r in rejected:
        raw = r.raw
        if isinstance(raw, dict):
            tid, cid = raw.get("tenant_id"), raw.get("call_id")
        else:
            tid, cid = getattr(raw, "tenant_id", None), getattr(raw, "call_id", None)
        out.append(QuarantineEvent(None if tid is None else str(tid)[:64], None if cid is None else str(cid)[:64],
                                   r.reason))  # fmt: skip
    return out


log = get_logger("ingest")


def after_batch(result: FlushResult, on_quarantine: Callable[[list[QuarantineEvent]], None] | None) -> None:
    """What both writers do once a batch is durable: log it, and hand quarantined rows to the callback
    (an exception in the callback is logged, never lost into the writer)."""
    event(log, logging.DEBUG, "batch", written=result.written, duplicates=result.duplicates,
          quarantined=result.quarantined, fallback=bool(result.fallbacks), retries=result.retries)  # fmt: skip
    if not result.rejected:
        return
    events = quarantine_events(result.rejected)
    reasons: dict[str, int] = {}
    for e in events:
        key = e.reason.split(":")[0][:80]
        reasons[key] = reasons.get(key, 0) + 1
    event(
        log, logging.WARNING, "quarantined", rows=len(events), reasons=sorted(f"{k} x{n}" for k, n in reasons.items())
    )
    if on_quarantine is not None:
        try:
            on_quarantine(events)
        except Exception:
            log.exception("on_quarantine callback failed (the rows are in callvault.quarantine)")


def log_retry(exc: BaseException, attempt: int, delay: float) -> None:
    event(log, logging.WARNING, "retrying batch", attempt=attempt, wait_s=delay, error=str(exc).splitlines()[0][:200])


def recheck(batch: Batch, live: LiveRange) -> tuple[list[Row], list[Rejected]]:
    """Rows still inside the live partitions, and everything to quarantine (pure)."""
    rows: list[Row] = []
    rejected = list(batch.rejected)
    for row in batch.rows:
        reason = live.reason(row[2])
        if reason is None:
            rows.append(row)
        else:
            rejected.append(Rejected(row_as_input(row, batch.shape), reason))
    return rows, rejected


def idempotent_result(rows: list[Row], written: int, refused: int, quarantined: int) -> FlushResult:
    """Counts of one batch sent through the staging path: what was not written nor refused was a duplicate."""
    return FlushResult(
        written=written, duplicates=len(rows) - written - refused, quarantined=quarantined, batches=1, fallbacks=1
    )


def written(shape: columns.Shape) -> tuple[str, ...]:
    """The columns a writer sends, in COPY order: the seed's, then the table's own."""
    return COLUMNS + shape.extra_names


def copy_types(shape: columns.Shape) -> list[str]:
    """Binary COPY types, column by column (for psycopg's ``copy.set_types``)."""
    return [*PG_TYPES, *(c.copy for c in shape.extras)]


def copy_sql(target: sql.Composable, shape: columns.Shape = columns.BASE) -> sql.Composed:
    cols = sql.SQL(", ").join(map(sql.Identifier, written(shape)))
    return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(target, cols)


def parent_copy_sql(settings: Settings, shape: columns.Shape = columns.BASE) -> sql.Composed:
    return copy_sql(sql.Identifier(settings.schema, settings.table), shape)


def stage_name(shape: columns.Shape) -> str:
    """The session's staging table: one per shape (a column added later gets a stage of its own)."""
    if not shape.extras:
        return STAGE
    import hashlib

    key = "|".join(f"{c.name}:{c.pg}" for c in shape.extras)
    return f"{STAGE}_{hashlib.blake2b(key.encode(), digest_size=6).hexdigest()}"


def stage_ddl(shape: columns.Shape = columns.BASE) -> sql.Composed:
    return columns.stage_ddl(
        sql.Identifier(stage_name(shape)), written(shape), json_as_text=False, on_commit="DELETE ROWS",
        extras=shape.extras,
    )  # fmt: skip


def stage_clear(shape: columns.Shape = columns.BASE) -> sql.Composed:
    return sql.SQL("TRUNCATE {}").format(sql.Identifier(stage_name(shape)))


def stage_copy(shape: columns.Shape = columns.BASE) -> sql.Composed:
    return copy_sql(sql.Identifier(stage_name(shape)), shape)


STAGE_DDL = stage_ddl()
STAGE_CLEAR = stage_clear()
STAGE_COPY = stage_copy()


def merge_sql(settings: Settings, shape: columns.Shape = columns.BASE) -> sql.Composed:
    """Staged rows into the table; a retried row (same tenant, call id, started_at) is skipped.

    ``ON CONFLICT DO NOTHING`` without a conflict target: with a target Postgres also demands SELECT
    on the key columns, and the writers hold INSERT only. The primary key's ``id`` comes from the
    sequence, so the only key a retried row can hit is ``(tenant_id, call_id, started_at)``."""
    cols = sql.SQL(", ").join(map(sql.Identifier, written(shape)))
    return sql.SQL("INSERT INTO {} ({cols}) SELECT {cols} FROM {} ON CONFLICT DO NOTHING").format(
        sql.Identifier(settings.schema, settings.table), sql.Identifier(stage_name(shape)), cols=cols
    )


# Citus (see _async_io._merge_values): the connections known to hold a distributed table
DISTRIBUTED: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
VALUES_SLICE = 4_000  # rows per VALUES insert: 8 columns each, under the 65,535 parameters of a statement


CITUS_SQL = "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')"


def distributed_sql(settings: Settings) -> sql.Composed:
    """Whether the table is distributed (only where :data:`CITUS_SQL` says Citus is installed)."""
    return sql.SQL("SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = to_regclass({}))").format(
        sql.Literal(sql.Identifier(settings.schema, settings.table).as_string())
    )


def values_sql(settings: Settings, n: int, shape: columns.Shape = columns.BASE) -> sql.Composed:
    """``INSERT INTO t (cols) VALUES (...) x n ON CONFLICT DO NOTHING`` with typed placeholders."""
    cols = sql.SQL(", ").join(map(sql.Identifier, written(shape)))
    one = sql.SQL("({})").format(sql.SQL(", ").join(sql.SQL("%s::{}").format(sql.SQL(t)) for t in copy_types(shape)))
    return sql.SQL("INSERT INTO {} ({}) VALUES {} ON CONFLICT DO NOTHING").format(
        sql.Identifier(settings.schema, settings.table), cols, sql.SQL(", ").join([one] * n)
    )


def values_params(rows: list[Row]) -> list[Any]:
    """The rows flattened for :func:`values_sql` (pre-encoded metadata as JSON text)."""
    out: list[Any] = []
    for row in rows:
        out.extend(v.decode() if isinstance(v, bytes) else v for v in row)  # jsonb: the JSON text validation made
    return out


def quarantine_sql(*, dedupe: bool = False) -> sql.Composed:
    """Insert a quarantined row. ``dedupe``: for re-sent batches, whose first attempt may have
    committed its quarantine rows already (same table and raw row: skip)."""
    q = sql.Identifier(META_SCHEMA, "quarantine")
    if not dedupe:
        return sql.SQL("INSERT INTO {} (target_table, reason, raw) VALUES (%s, %s, %s)").format(q)
    return sql.SQL("SELECT {}(%(t)s, %(r)s, %(raw)s)").format(sql.Identifier(META_SCHEMA, "quarantine_once"))


def quarantine_record(rejected: Rejected) -> tuple[str, str]:
    """``(reason, raw)`` for the quarantine table: the input in the quarantine's encoding
    (:mod:`callvault.ingest.rawform`), and the reason, saying so when a value is stored as a tag."""
    encoded = rawform.encode(rejected.raw)
    if not encoded.markers:
        return rejected.reason, encoded.text
    return f"{rejected.reason} [{rawform.note(encoded.markers)}]", encoded.text


def quarantine_params(settings: Settings, rejected: list[Rejected], *, dedupe: bool = False) -> list[Any]:
    records = [quarantine_record(r) for r in rejected]
    if dedupe:
        return [{"t": settings.qualified, "r": reason, "raw": raw} for reason, raw in records]
    return [(settings.qualified, reason, raw) for reason, raw in records]


def row_as_input(row: Row, shape: columns.Shape = columns.BASE) -> dict[str, object]:
    """A validated row back in the shape ``validate`` accepts (for rows the database refused)."""
    out: dict[str, object] = dict(zip(written(shape), row, strict=True))
    for c in shape.extras:  # back to what validate accepts (JSON values, exact decimals as text, ISO times)
        value = out[c.name]
        if c.copy == "jsonb" and isinstance(value, bytes):
            out[c.name] = json.loads(bytes(value))
        elif c.copy == "timestamptz" and isinstance(value, datetime):
            out[c.name] = value.isoformat()
    meta = out["metadata"]
    if isinstance(meta, bytes):
        try:
            out["metadata"] = json.loads(bytes(meta))
        except RecursionError:  # nesting the encoder took but this stack cannot parse: keep the bytes (tagged)
            out["metadata"] = bytes(meta)
    for key in ("started_at", "ended_at"):
        value = out[key]
        out[key] = value.isoformat() if isinstance(value, datetime) else value
    return out


def is_retryable(exc: BaseException) -> bool:
    """The connection or the server went away (the batch's fate is unknown), a lock/statement timeout
    hit (e.g. during partition DDL), or the server is a standby now (a primary demoted by a failover:
    :func:`on_standby`): re-send the batch through the idempotent path."""
    from psycopg_pool import PoolTimeout

    return on_standby(exc) or isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | PoolTimeout)


def on_standby(exc: BaseException) -> bool:
    """The connection reached a server in recovery (a read-only transaction): after a failover, a pooled
    connection to the old primary, rejoined as a standby. That connection must be closed, not reused: a
    new one (``target_session_attrs=read-write``) finds the primary."""
    return isinstance(exc, pgerr.ReadOnlySqlTransaction)


def failure(error: BaseException | None, unwritten: list[Batch]) -> WriterError:
    """The writer's terminal error, carrying every row not committed, in the shape ``write`` accepts."""
    rows: list[object] = [row_as_input(r, batch.shape) for batch in unwritten for r in batch.rows]
    rows += [rej.raw for batch in unwritten for rej in batch.rejected]
    exc = WriterError(
        f"{len(rows)} rows could not be written ({error}); they are in WriterError.unwritten: store them "
        "and write them again when the database is back",
        rows,
    )
    exc.__cause__ = error
    return exc


# Citus reports a worker's refusal of a COPY'd row as an internal error (XX000) with the worker's message
_CITUS_UNIQUE = "duplicate key value violates unique constraint"
_CITUS_ROW = ("violates check constraint", "violates not-null constraint", "no partition of relation",
              "invalid input syntax", "out of range", "violates foreign key constraint")  # fmt: skip


def _citus_message(exc: BaseException) -> str | None:
    if isinstance(exc, pgerr.InternalError_):
        return exc.diag.message_primary or str(exc)
    return None


def is_row_error(exc: BaseException) -> bool:
    """An error some row in the batch caused (bad value, no partition, constraint): isolate it."""
    msg = _citus_message(exc)
    if msg is not None:
        return any(m in msg for m in _CITUS_ROW)
    return isinstance(exc, psycopg.DataError | psycopg.IntegrityError) and not isinstance(exc, pgerr.UniqueViolation)


def refused_row(exc: psycopg.Error, rows: list[Row], start: int) -> list[tuple[int, str]] | None:
    """Bisection's verdict on a slice of ``rows`` (at index ``start``) the database refused (pure):
    ``exc`` again when no row caused it, the one row's refusal when the slice is one row, None when the
    slice must be split in halves and each retried."""
    if not is_row_error(exc):
        raise exc
    return [(start, db_reason(exc))] if len(rows) == 1 else None


def needs_fallback(exc: BaseException) -> bool:
    msg = _citus_message(exc)
    return isinstance(exc, pgerr.UniqueViolation) or (msg is not None and _CITUS_UNIQUE in msg) or is_row_error(exc)


def db_reason(exc: psycopg.Error) -> str:
    msg = exc.diag.message_primary or str(exc)
    if "no partition of relation" in msg:
        return f"{msg}: run `callvault maintain` to create the partition, then `callvault quarantine replay`"
    return f"refused by the database: {msg}"


TYPES = PG_TYPES
