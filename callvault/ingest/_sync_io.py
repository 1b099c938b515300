"""GENERATED from _async_io.py by scripts/async_to_sync.py: do not edit; edit the async source and run
``make sync-twins``. The synchronous twin of :mod:`callvault.ingest._async_io` (see there for the why).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import psycopg
from psycopg import sql

from callvault.columns import BASE, Shape
from callvault.config import Settings
from callvault.db import Conn
from callvault.ingest import _batch as b
from callvault.ingest.validate import LiveRange, Rejected, Row

RangeLoader = Callable[[Conn], LiveRange]


def _copy(conn: Conn, stmt: sql.Composed, rows: Sequence[Row], shape: Shape) -> None:
    with conn.cursor() as cur, cur.copy(stmt) as cp:
        cp.set_types(b.copy_types(shape))
        for row in rows:
            cp.write_row(row)


def _quarantine(conn: Conn, settings: Settings, rejected: list[Rejected], *, dedupe: bool = False) -> None:
    if rejected:
        with conn.cursor() as cur:
            cur.executemany(b.quarantine_sql(dedupe=dedupe), b.quarantine_params(settings, rejected, dedupe=dedupe))


def merge_rows(conn: Conn, settings: Settings, rows: list[Row], shape: Shape = BASE) -> tuple[int, list[Rejected]]:
    """Staged rows into the table (idempotently); the rows the database refused, with its reason."""
    written, refused = merge_indexed(conn, settings, rows, 0, shape)
    return written, [Rejected(b.row_as_input(rows[i], shape), why) for i, why in refused]


def merge_indexed(
    conn: Conn, settings: Settings, rows: list[Row], start: int = 0, shape: Shape = BASE
) -> tuple[int, list[tuple[int, str]]]:
    """Staged rows into the table (idempotently); the rows the database refused, by index, with its reason."""
    if not rows:
        return 0, []
    try:
        with conn.transaction():  # a savepoint: a failure undoes only this slice
            if _distributed(conn, settings):
                return _merge_values(conn, settings, rows, shape), []
            conn.execute(b.stage_clear(shape))
            _copy(conn, b.stage_copy(shape), rows, shape)
            return conn.execute(b.merge_sql(settings, shape)).rowcount, []
    except psycopg.Error as exc:
        if (refused := b.refused_row(exc, rows, start)) is not None:
            return 0, refused
    mid = len(rows) // 2
    left = merge_indexed(conn, settings, rows[:mid], start, shape)
    right = merge_indexed(conn, settings, rows[mid:], start + mid, shape)
    return left[0] + right[0], left[1] + right[1]


def _distributed(conn: Conn, settings: Settings) -> bool:
    """Whether the table is a Citus distributed table (asked once per connection)."""
    known = b.DISTRIBUTED.get(conn)
    if known is None:
        cur = conn.execute(b.CITUS_SQL)
        row = cur.fetchone()
        if row and row[0]:
            cur = conn.execute(b.distributed_sql(settings))
            row = cur.fetchone()
        known = b.DISTRIBUTED[conn] = bool(row and row[0])
    return known


def _merge_values(conn: Conn, settings: Settings, rows: list[Row], shape: Shape) -> int:
    """Citus: ``INSERT ... VALUES ... ON CONFLICT DO NOTHING`` in slices. An ``INSERT ... SELECT`` from
    the stage runs through the coordinator and reports the rows it pulled, not the rows it inserted;
    a multi-row VALUES insert is routed to the shards and counts what they inserted."""
    written = 0
    step = min(b.VALUES_SLICE, 60_000 // len(b.written(shape)))  # under 65,535 parameters a statement
    for i in range(0, len(rows), step):
        part = rows[i : i + step]
        stmt = b.values_sql(settings, len(part), shape)
        written += conn.execute(stmt, b.values_params(part)).rowcount
    return written


def write_fast(conn: Conn, settings: Settings, batch: b.Batch) -> b.FlushResult | None:
    """Plain COPY; None when the batch needs the idempotent path."""
    try:
        with conn.transaction():
            conn.execute(b.DURABLE)
            _copy(conn, b.parent_copy_sql(settings, batch.shape), batch.rows, batch.shape)
            _quarantine(conn, settings, batch.rejected)
    except psycopg.Error as exc:
        if b.needs_fallback(exc):
            return None
        raise
    return b.FlushResult(written=len(batch.rows), quarantined=len(batch.rejected), batches=1, rejected=batch.rejected)


def write_idempotent(conn: Conn, settings: Settings, batch: b.Batch, load_range: RangeLoader) -> b.FlushResult:
    """Re-check, stage, ``INSERT ... ON CONFLICT DO NOTHING``; refused rows are quarantined."""
    live: LiveRange = load_range(conn)
    rows, rejected = b.recheck(batch, live)
    with conn.transaction():
        conn.execute(b.DURABLE)
        conn.execute(b.stage_ddl(batch.shape))
        written, refused = merge_rows(conn, settings, rows, batch.shape)
        rejected += refused
        _quarantine(conn, settings, rejected, dedupe=batch.idempotent)
    result = b.idempotent_result(rows, written, len(refused), len(rejected))
    result.rejected = rejected
    return result


def write_batch(conn: Conn, settings: Settings, batch: b.Batch, load_range: RangeLoader) -> b.FlushResult:
    """One batch: the fast path when it can, else the idempotent one."""
    b.prepare_connection(conn)
    if not batch.idempotent and batch.rows:
        done = write_fast(conn, settings, batch)
        if done is not None:
            return done
    if not batch.rows:
        with conn.transaction():
            _quarantine(conn, settings, batch.rejected, dedupe=batch.idempotent)
        return b.FlushResult(quarantined=len(batch.rejected), batches=1, rejected=batch.rejected)
    return write_idempotent(conn, settings, batch, load_range)
