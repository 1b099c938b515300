"""The asyncio twin of :mod:`callvault.ingest._sync_io` (same steps; see there for the why)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import sql

from callvault.config import Settings
from callvault.ingest import _batch as b
from callvault.ingest.validate import LiveRange, Rejected, Row

AConn = psycopg.AsyncConnection[Any]
RangeLoader = Callable[[AConn], Any]  # async (conn) -> LiveRange


async def _copy(conn: AConn, stmt: sql.Composed, rows: Sequence[Row]) -> None:
    async with conn.cursor() as cur, cur.copy(stmt) as cp:
        cp.set_types(list(b.TYPES))
        for row in rows:
            await cp.write_row(row)


async def _quarantine(conn: AConn, settings: Settings, rejected: list[Rejected], *, dedupe: bool = False) -> None:
    if rejected:
        async with conn.cursor() as cur:
            await cur.executemany(
                b.quarantine_sql(dedupe=dedupe), b.quarantine_params(settings, rejected, dedupe=dedupe)
            )


async def _merge(conn: AConn, settings: Settings, rows: list[Row]) -> tuple[int, list[Rejected]]:
    if not rows:
        return 0, []
    try:
        async with conn.transaction():
            await conn.execute(b.STAGE_CLEAR)
            await _copy(conn, b.STAGE_COPY, rows)
            return (await conn.execute(b.merge_sql(settings))).rowcount, []
    except psycopg.Error as exc:
        if not b.is_row_error(exc):
            raise
        if len(rows) == 1:
            return 0, [Rejected(b.row_as_input(rows[0]), b.db_reason(exc))]
    mid = len(rows) // 2
    left = await _merge(conn, settings, rows[:mid])
    right = await _merge(conn, settings, rows[mid:])
    return left[0] + right[0], left[1] + right[1]


async def write_fast(conn: AConn, settings: Settings, batch: b.Batch) -> b.FlushResult | None:
    try:
        async with conn.transaction():
            await conn.execute(b.DURABLE)
            await _copy(conn, b.parent_copy_sql(settings), batch.rows)
            await _quarantine(conn, settings, batch.rejected)
    except psycopg.Error as exc:
        if b.needs_fallback(exc):
            return None
        raise
    return b.FlushResult(written=len(batch.rows), quarantined=len(batch.rejected), batches=1)


async def write_idempotent(conn: AConn, settings: Settings, batch: b.Batch, load_range: RangeLoader) -> b.FlushResult:
    live: LiveRange = await load_range(conn)
    rows, rejected = b.recheck(batch, live)
    async with conn.transaction():
        await conn.execute(b.DURABLE)
        await conn.execute(b.STAGE_DDL)
        written, refused = await _merge(conn, settings, rows)
        rejected += refused
        await _quarantine(conn, settings, rejected, dedupe=batch.idempotent)
    return b.idempotent_result(rows, written, len(refused), len(rejected))


async def write_batch(conn: AConn, settings: Settings, batch: b.Batch, load_range: RangeLoader) -> b.FlushResult:
    b.prepare_connection(conn)
    if not batch.idempotent and batch.rows:
        done = await write_fast(conn, settings, batch)
        if done is not None:
            return done
    if not batch.rows:
        async with conn.transaction():
            await _quarantine(conn, settings, batch.rejected, dedupe=batch.idempotent)
        return b.FlushResult(quarantined=len(batch.rejected), batches=1)
    return await write_idempotent(conn, settings, batch, load_range)
