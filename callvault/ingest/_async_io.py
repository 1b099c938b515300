"""One batch into Postgres: fast path, idempotent fallback, row isolation.

THE SOURCE of both twins: this asyncio module is the one that is edited; ``_sync_io.py`` is generated
from it by ``scripts/async_to_sync.py`` (``make sync-twins``), and ``tests/test_twins.py`` fails when
the checked-in sync module differs from what the script produces. Lines ending in ``# sync: <code>``
are replaced by ``<code>`` in the sync twin.

* Fast path: one binary ``COPY`` into the parent table, quarantine rows in the same transaction.
* Fallback (a duplicate key, a row the database refuses, or a re-send after a lost connection):
  re-check ``started_at`` against the live partitions, ``COPY`` into a temporary staging table and
  ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``. A row that still fails is isolated by bisection
  (savepoints) and quarantined with the database's own message; the other rows land.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import sql

from callvault.columns import BASE, Shape
from callvault.config import Settings
from callvault.ingest import _batch as b
from callvault.ingest.validate import LiveRange, Rejected, Row

AConn = psycopg.AsyncConnection[Any]  # sync: from callvault.db import Conn
RangeLoader = Callable[[AConn], Any]  # sync: RangeLoader = Callable[[Conn], LiveRange]


async def _copy(conn: AConn, stmt: sql.Composed, rows: Sequence[Row], shape: Shape) -> None:
    async with conn.cursor() as cur, cur.copy(stmt) as cp:
        cp.set_types(b.copy_types(shape))
        for row in rows:
            await cp.write_row(row)


async def _quarantine(conn: AConn, settings: Settings, rejected: list[Rejected], *, dedupe: bool = False) -> None:
    if rejected:
        async with conn.cursor() as cur:
            await cur.executemany(
                b.quarantine_sql(dedupe=dedupe), b.quarantine_params(settings, rejected, dedupe=dedupe)
            )


async def merge_rows(
    conn: AConn, settings: Settings, rows: list[Row], shape: Shape = BASE
) -> tuple[int, list[Rejected]]:
    """Staged rows into the table (idempotently); the rows the database refused, with its reason."""
    written, refused = await merge_indexed(conn, settings, rows, 0, shape)
    return written, [Rejected(b.row_as_input(rows[i], shape), why) for i, why in refused]


async def merge_indexed(
    conn: AConn, settings: Settings, rows: list[Row], start: int = 0, shape: Shape = BASE
) -> tuple[int, list[tuple[int, str]]]:
    """Staged rows into the table (idempotently); the rows the database refused, by index, with its reason."""
    if not rows:
        return 0, []
    try:
        async with conn.transaction():  # a savepoint: a failure undoes only this slice
            if await _distributed(conn, settings):
                return await _merge_values(conn, settings, rows, shape), []
            await conn.execute(b.stage_clear(shape))
            await _copy(conn, b.stage_copy(shape), rows, shape)
            return (await conn.execute(b.merge_sql(settings, shape))).rowcount, []
    except psycopg.Error as exc:
        if (refused := b.refused_row(exc, rows, start)) is not None:
            return 0, refused
    mid = len(rows) // 2
    left = await merge_indexed(conn, settings, rows[:mid], start, shape)
    right = await merge_indexed(conn, settings, rows[mid:], start + mid, shape)
    return left[0] + right[0], left[1] + right[1]


async def _distributed(conn: AConn, settings: Settings) -> bool:
    """Whether the table is a Citus distributed table (asked once per connection)."""
    known = b.DISTRIBUTED.get(conn)
    if known is None:
        cur = await conn.execute(b.CITUS_SQL)
        row = await cur.fetchone()
        if row and row[0]:
            cur = await conn.execute(b.distributed_sql(settings))
            row = await cur.fetchone()
        known = b.DISTRIBUTED[conn] = bool(row and row[0])
    return known


async def _merge_values(conn: AConn, settings: Settings, rows: list[Row], shape: Shape) -> int:
    """Citus: ``INSERT ... VALUES ... ON CONFLICT DO NOTHING`` in slices. An ``INSERT ... SELECT`` from
    the stage runs through the coordinator and reports the rows it pulled, not the rows it inserted;
    a multi-row VALUES insert is routed to the shards and counts what they inserted."""
    written = 0
    step = min(b.VALUES_SLICE, 60_000 // len(b.written(shape)))  # under 65,535 parameters a statement
    for i in range(0, len(rows), step):
        part = rows[i : i + step]
        stmt = b.values_sql(settings, len(part), shape)
        written += (await conn.execute(stmt, b.values_params(part))).rowcount
    return written


async def write_fast(conn: AConn, settings: Settings, batch: b.Batch) -> b.FlushResult | None:
    """Plain COPY; None when the batch needs the idempotent path."""
    try:
        async with conn.transaction():
            await conn.execute(b.DURABLE)
            await _copy(conn, b.parent_copy_sql(settings, batch.shape), batch.rows, batch.shape)
            await _quarantine(conn, settings, batch.rejected)
    except psycopg.Error as exc:
        if b.needs_fallback(exc):
            return None
        raise
    return b.FlushResult(written=len(batch.rows), quarantined=len(batch.rejected), batches=1, rejected=batch.rejected)


async def write_idempotent(conn: AConn, settings: Settings, batch: b.Batch, load_range: RangeLoader) -> b.FlushResult:
    """Re-check, stage, ``INSERT ... ON CONFLICT DO NOTHING``; refused rows are quarantined."""
    live: LiveRange = await load_range(conn)
    rows, rejected = b.recheck(batch, live)
    async with conn.transaction():
        await conn.execute(b.DURABLE)
        await conn.execute(b.stage_ddl(batch.shape))
        written, refused = await merge_rows(conn, settings, rows, batch.shape)
        rejected += refused
        await _quarantine(conn, settings, rejected, dedupe=batch.idempotent)
    result = b.idempotent_result(rows, written, len(refused), len(rejected))
    result.rejected = rejected
    return result


async def write_batch(conn: AConn, settings: Settings, batch: b.Batch, load_range: RangeLoader) -> b.FlushResult:
    """One batch: the fast path when it can, else the idempotent one."""
    b.prepare_connection(conn)
    if not batch.idempotent and batch.rows:
        done = await write_fast(conn, settings, batch)
        if done is not None:
            return done
    if not batch.rows:
        async with conn.transaction():
            await _quarantine(conn, settings, batch.rejected, dedupe=batch.idempotent)
        return b.FlushResult(quarantined=len(batch.rejected), batches=1, rejected=batch.rejected)
    return await write_idempotent(conn, settings, batch, load_range)
