"""The asyncio batching writer: same contract as :class:`callvault.ingest.writer.Writer`.

``await write(call)`` validates and buffers; a background task COPYs batches (full, older than
``flush_interval``, on ``flush()``/``aclose()``). A bounded queue makes ``write`` wait when the
database is behind. Connection failures are retried through the idempotent path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from psycopg_pool import AsyncConnectionPool

from callvault import catalog
from callvault.config import Settings
from callvault.db import probe, resolve_dsn
from callvault.errors import WriterError
from callvault.ingest import _batch as b
from callvault.ingest._async_io import AConn, write_batch
from callvault.ingest.instrument import MetricsArg, WriterMetrics
from callvault.ingest.validate import DEFAULT_MAX_TRANSCRIPT_BYTES, LiveRange, Rejected, Rules, validate
from callvault.ingest.writer import (
    BACKOFF_MAX_S,
    BACKOFF_START_S,
    CONNECT_KWARGS,
    CONNECT_WAIT_S,
    DEFAULT_BATCH_ROWS,
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_MAX_PENDING,
    DEFAULT_RETRY_FOR,
    QUARANTINE_SQL,
    RANGE_REFRESH_S,
    READY_SQL,
    CallLike,
    as_settings,
    decide_ready,
    decide_role,
    ready_params,
)

_STOP = object()


async def configure_connection(conn: AConn) -> None:
    await conn.execute("SET timezone TO 'UTC'")
    await conn.execute("SET synchronous_commit TO on")
    await conn.commit()
    b.prepare_connection(conn)


class AsyncWriter:
    """Batching, idempotent, quarantining writer for asyncio. ``async with AsyncWriter(...) as w``.

    Its own pool connects with ``prepare_threshold=None`` (PgBouncer-safe, see ``CONNECT_KWARGS``);
    a ``pool`` you pass in needs ``kwargs={"prepare_threshold": None}`` behind PgBouncer.

    ``metrics``: the Prometheus registry it counts on, as :class:`~callvault.ingest.writer.Writer`'s
    (default ``prometheus_client.REGISTRY``, ``False`` for none; :mod:`callvault.ingest.instrument`)."""

    def __init__(
        self,
        target: Settings | str | None = None,
        *,
        pool: AsyncConnectionPool[Any] | None = None,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_transcript_bytes: int = DEFAULT_MAX_TRANSCRIPT_BYTES,
        assume_utc: bool = False,
        retry_for: float = DEFAULT_RETRY_FOR,
        on_quarantine: Callable[[list[b.QuarantineEvent]], None] | None = None,
        metrics: MetricsArg = None,
    ) -> None:
        self.settings = as_settings(target)
        self._metrics = WriterMetrics.of(metrics, self.settings.qualified)  # callvault.ingest.instrument
        self._batch_rows, self._flush_interval, self._retry_for = batch_rows, flush_interval, retry_for
        self._on_quarantine = on_quarantine  # called (from the sender) with each durable batch's quarantined rows
        self._pool_arg, self._own_pool = pool, pool is None
        self._base_rules = Rules(max_transcript_bytes=max_transcript_bytes, assume_utc=assume_utc)
        self._rules = self._base_rules
        self._range_at = 0.0
        self._current = b.Batch()
        self._started: float | None = None
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize=max_pending)
        self._total, self._reported = b.FlushResult(), b.FlushResult()
        self._error: BaseException | None = None
        self._unwritten: list[b.Batch] = []
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def open(self) -> AsyncWriter:
        """Connect (probing once: a wrong password or closed port raises at once), check the table is
        initialised and the role may COPY, start the sender task. ``async with AsyncWriter(...)`` calls
        it. Raises AuthenticationFailed / DatabaseUnavailable / NotInitialised / WriterError."""
        pool = self._pool_arg
        if pool is None:
            await asyncio.to_thread(probe, resolve_dsn(self.settings))  # wrong password: now, not after 30 s
            pool = AsyncConnectionPool(
                resolve_dsn(self.settings), min_size=1, max_size=1, open=False, name="callvault-async-writer",
                configure=configure_connection, check=AsyncConnectionPool.check_connection,
                kwargs=CONNECT_KWARGS,
            )  # fmt: skip
            await pool.open()
        self._pool = pool
        try:
            async with self._pool.connection() as conn:
                params = ready_params(self.settings)
                row = await (await conn.execute(READY_SQL, params)).fetchone()
                decide_role(row, self.settings)
                decide_ready(row, await (await conn.execute(QUARANTINE_SQL, params)).fetchone(), self.settings)
                await self._load_range(conn)
        except BaseException:
            if self._own_pool:
                await self._pool.close()
            raise
        self._task = asyncio.create_task(self._run(), name="callvault-async-writer")
        return self

    async def __aenter__(self) -> AsyncWriter:
        return await self.open()

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def write(self, call: CallLike) -> None:
        """Validate one call and buffer it (a bad row is set aside for the quarantine, never raised);
        waits when ``max_pending`` batches are queued (back-pressure). Raises WriterError once the
        writer has failed or is closed."""
        self._check()
        out = validate(call, self._rules)
        await self._add([out] if type(out) is not Rejected else [], [out] if type(out) is Rejected else [])

    async def write_many(self, calls: Iterable[CallLike]) -> None:
        """:meth:`write` for many calls."""
        self._check()
        rows: list[Any] = []
        rejected: list[Rejected] = []
        for call in calls:
            out = validate(call, self._rules)
            if type(out) is Rejected:
                rejected.append(out)
            else:
                rows.append(out)
            if len(rows) + len(rejected) >= self._batch_rows:
                await self._add(rows, rejected)
                rows, rejected = [], []
        if rows or rejected:
            await self._add(rows, rejected)

    async def flush(self) -> b.FlushResult:
        """Send what is buffered and wait until every batch so far is durable; the counts since the
        last flush (written, duplicates, quarantined...). Raises WriterError (with ``unwritten``)."""
        self._check()
        sealed = self._seal()
        if sealed is not None:
            await self._put(sealed)
        marker: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._put(marker)
        assert self._task is not None
        await asyncio.wait({marker, self._task}, return_when=asyncio.FIRST_COMPLETED)
        self._check()
        return self._delta()

    @property
    def stats(self) -> b.FlushResult:
        """Counts since the writer opened (a copy)."""
        return self._total.copy()

    async def close(self) -> b.FlushResult:
        """Same as :meth:`aclose` (the name the sync :class:`callvault.ingest.Writer` uses)."""
        return await self.aclose()

    async def aclose(self) -> b.FlushResult:
        """Send what is buffered, stop the sender task, close the pool; raise WriterError on failure."""
        if self._closed:
            return b.FlushResult()
        self._closed = True
        sealed = self._seal()
        if sealed is not None:
            await self._put(sealed)
        if self._task is not None:
            await self._put(_STOP)
            await self._task  # it drains the queue up to the stop marker, then returns
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, b.Batch):
                if self._metrics:
                    self._metrics.queued(-1)
                await self._send(item)
        if self._own_pool and hasattr(self, "_pool"):
            await self._pool.close()
        if self._error is not None:
            raise b.failure(self._error, self._unwritten)
        return self._delta()

    # -- internals -----------------------------------------------------------------------------
    async def _add(self, rows: list[Any], rejected: list[Rejected]) -> None:
        cur = self._current
        cur.rows += rows
        cur.rejected += rejected
        if self._started is None:
            self._started = time.monotonic()
        if len(cur) >= self._batch_rows:
            sealed = self._seal()
            if sealed is not None:
                await self._put(sealed)  # waits while max_pending batches are queued

    async def _put(self, item: b.Batch | object) -> None:
        # shield: a caller's timeout/cancellation must not drop a batch already taken from the buffer
        if self._metrics and isinstance(item, b.Batch):
            self._metrics.queued(1)
        await asyncio.shield(self._queue.put(item))

    def _seal(self) -> b.Batch | None:
        if not len(self._current):
            return None
        sealed, self._current, self._started = self._current, b.Batch(), None
        return sealed

    def _delta(self) -> b.FlushResult:
        delta = self._total.minus(self._reported)
        self._reported = self._total.copy()
        return delta

    def _check(self) -> None:
        if self._error is not None:
            raise b.failure(self._error, self._unwritten)
        if self._closed:
            raise WriterError("the writer is closed")
        if self._task is None:
            raise WriterError("the writer is not open: use `async with AsyncWriter(...)` or `await writer.open()`")
        if self._task.done():
            raise WriterError("the writer's sender task stopped; close it and open a new one")

    async def _load_range(self, conn: AConn) -> LiveRange:
        cur = await conn.execute(catalog.BOUNDS_SQL, (catalog.parent_regclass(self.settings),))
        live = LiveRange(catalog.bounds_from_rows(await cur.fetchall()))
        await conn.commit()
        self._rules = Rules(self._base_rules.max_transcript_bytes, self._base_rules.assume_utc, live)
        self._range_at = time.monotonic()
        return live

    async def _run(self) -> None:
        while True:
            try:
                item = await asyncio.wait_for(self._queue.get(), timeout=self._flush_interval / 4)
            except TimeoutError:
                old = self._started is not None and time.monotonic() - self._started >= self._flush_interval
                sealed = self._seal() if old else None
                if sealed is not None:
                    await self._send(sealed)
                continue
            if item is _STOP:
                return
            if isinstance(item, b.Batch):
                if self._metrics:
                    self._metrics.queued(-1)
                await self._send(item)
            elif isinstance(item, asyncio.Future) and not item.done():
                item.set_result(None)

    async def _send(self, batch: b.Batch) -> None:
        if self._error is not None:
            self._unwritten.append(batch)
            return
        sent_at = time.monotonic()
        deadline, delay, retries = sent_at + self._retry_for, BACKOFF_START_S, 0
        while True:
            try:
                async with self._pool.connection(timeout=CONNECT_WAIT_S) as conn:
                    result = await write_batch(conn, self.settings, batch, self._load_range)
                    if time.monotonic() - self._range_at > RANGE_REFRESH_S:
                        await self._load_range(conn)
                break
            except Exception as exc:
                if not b.is_retryable(exc) or time.monotonic() + delay > deadline:
                    self._error = exc
                    self._unwritten.append(batch)
                    if self._metrics:
                        self._metrics.gave_up(b.is_retryable(exc))
                    return
                if self._metrics:
                    self._metrics.retry()
                batch.idempotent = True
                retries += 1
                b.log_retry(exc, retries, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
        result.retries = retries
        if self._metrics:
            self._metrics.batch_done(result, time.monotonic() - sent_at)
        b.after_batch(result, self._on_quarantine)
        self._total.add(result)
