"""The batching writer. Producers call ``write``; a sender (a task here, a thread in the sync twin) COPYs batches.

THE SOURCE of both twins: :class:`AsyncWriter` is edited here, and :class:`callvault.ingest.Writer`
(``writer.py``) is generated from it by ``scripts/async_to_sync.py`` (``make sync-twins``);
``tests/test_twins.py`` checks it is current. Where the two must differ, ``if True:  # ASYNC`` ...
``else:`` blocks and ``# sync:`` lines say what the sync twin does instead.

Rows are validated in the caller (bad ones are set aside with a reason), buffered, and sent as one
binary COPY per batch: when the batch is full, when its oldest row is ``flush_interval`` old, on
``flush()`` and on ``close()``. At most ``max_pending`` sealed batches wait for the database; past that
``write`` waits (back-pressure) instead of growing memory. A lost connection or a restarted server is
retried with backoff for ``retry_for`` seconds, re-sending through the idempotent path, so nothing is
lost and nothing doubled. If it still fails, the rows are kept and every later call raises
:class:`~callvault.errors.WriterError` carrying them.

The sync :class:`~callvault.ingest.Writer` opens when constructed and is thread-safe (its state is
guarded by a lock; ``self._lock`` is a no-op context here, where one event loop runs everything).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from types import TracebackType
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from callvault import catalog, waits
from callvault.columns import Column, Shape
from callvault.config import Settings
from callvault.db import probe, resolve_dsn
from callvault.errors import WriterError
from callvault.ingest import _batch as b
from callvault.ingest._async_io import write_batch
from callvault.ingest.common import (
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
from callvault.ingest.instrument import MetricsArg, WriterMetrics
from callvault.ingest.pools import AsyncFailoverPool
from callvault.ingest.redact import Redaction, as_redaction
from callvault.ingest.validate import DEFAULT_MAX_TRANSCRIPT_BYTES, LiveRange, Rejected, Rules, validate

AConn = psycopg.AsyncConnection[Any]  # sync: from callvault.db import Conn
POOL_NAME = "callvault-async-writer"  # sync: POOL_NAME = "callvault-writer"


class _Marker:
    """Queued by flush(): when the sender reaches it, every batch queued before it is done."""

    def __init__(self) -> None:
        self.done = asyncio.Event()


_STOP = object()


async def configure_connection(conn: AConn) -> None:
    await conn.execute("SET timezone TO 'UTC'")
    await conn.execute("SET synchronous_commit TO on")  # flush() means durable
    await conn.commit()
    b.prepare_connection(conn)


class AsyncWriter:
    """Batching, idempotent, quarantining call-log writer: ``async with AsyncWriter(...) as w`` (the sync
    twin, :class:`callvault.ingest.Writer`, is ready when constructed and thread-safe: ``with Writer(...)``).

    ``pool``: your own ``psycopg_pool`` pool instead of the writer's one-connection pool. Behind PgBouncer
    in transaction mode create it with ``kwargs={"prepare_threshold": None}`` (the writer's own pool does
    that, see ``CONNECT_KWARGS``); the writer does not change a pool it was given.

    ``metrics``: the Prometheus registry the writer counts on (rows written, duplicates, quarantined by
    reason, batches, flush latency, queue depth, retries, connection failures, redactions; see
    :mod:`callvault.ingest.instrument`); default ``prometheus_client.REGISTRY``, ``False`` for none.

    ``redact``: rewrite each call's transcript (and chosen metadata keys) before anything is written or
    quarantined: ``True`` for the built-in redactors (e-mail, phone, card, national id), a list of metadata
    keys to redact too, or a :class:`callvault.ingest.redact.Redaction`."""

    _pool: AsyncConnectionPool[Any]

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
        redact: Redaction | bool | Iterable[str] | None = None,
    ) -> None:
        self.settings = as_settings(target)
        self._redact = as_redaction(redact)  # callvault.ingest.redact: applied to each validated call, before buffering
        self._metrics = WriterMetrics.of(metrics, self.settings.qualified)  # callvault.ingest.instrument
        self._batch_rows, self._flush_interval, self._retry_for = batch_rows, flush_interval, retry_for
        self._on_quarantine = on_quarantine  # called (from the sender) with each durable batch's quarantined rows
        self._pool_arg, self._own_pool = pool, pool is None
        self._base_rules = Rules(max_transcript_bytes=max_transcript_bytes, assume_utc=assume_utc)
        self._rules = self._base_rules
        self._range_at = 0.0
        self._lock = nullcontext()  # sync: self._lock = threading.Lock()
        self._current = b.Batch()
        self._started: float | None = None
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize=max_pending)
        self._total, self._reported = b.FlushResult(), b.FlushResult()
        self._error: BaseException | None = None
        self._unwritten: list[b.Batch] = []
        self._sender: asyncio.Task[None] | None = None  # sync: self._sender: threading.Thread | None = None
        self._closed = False
        if True:  # ASYNC
            pass  # opened by `async with AsyncWriter(...)` or `await writer.open()`
        else:
            self.open()  # the sync writer is ready when constructed

    async def open(self) -> AsyncWriter:
        """Connect (probing once: a wrong password or closed port raises at once, not after 30 s), check
        the table is initialised and the role may COPY, start the sender. Entering the ``with`` block
        calls it; opening an open writer does nothing. Raises AuthenticationFailed /
        DatabaseUnavailable / NotInitialised / WriterError."""
        if self._sender is not None:
            return self
        pool = self._pool_arg
        if pool is None:
            await asyncio.to_thread(probe, resolve_dsn(self.settings))  # sync: probe(resolve_dsn(self.settings))
            pool = AsyncFailoverPool(  # finds a new primary within ~2 s of a failover (ingest/pools.py)
                resolve_dsn(self.settings), min_size=1, max_size=1, open=False, name=POOL_NAME,
                configure=configure_connection, check=AsyncConnectionPool.check_connection,
                kwargs=CONNECT_KWARGS,
            )  # fmt: skip
            await pool.open()
        self._pool = pool
        try:
            async with self._pool.connection() as conn:
                params = ready_params(self.settings)
                cur = await conn.execute(READY_SQL, params)
                row = await cur.fetchone()
                decide_role(row, self.settings)
                cur = await conn.execute(QUARANTINE_SQL, params)
                decide_ready(row, await cur.fetchone(), self.settings)
                await self._load_range(conn)
        except BaseException:
            if self._own_pool:
                await self._pool.close()
            raise
        if True:  # ASYNC
            self._sender = asyncio.create_task(self._run(), name=POOL_NAME)
        else:
            self._sender = threading.Thread(target=self._run, name=POOL_NAME, daemon=True)
            self._sender.start()
        return self

    async def __aenter__(self) -> AsyncWriter:
        return await self.open()

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- producer side -----------------------------------------------------------------------
    async def write(self, call: CallLike) -> None:
        """Validate one call and buffer it (a bad row is set aside for the quarantine, never raised);
        waits only when ``max_pending`` batches are queued (back-pressure). Raises WriterError once the
        writer has failed or is closed."""
        rules = self._rules
        out = validate(call, rules)
        if self._redact is not None:
            out = self._redacted(out)
        await self._add(
            [out] if type(out) is not Rejected else [], [out] if type(out) is Rejected else [], rules.extras
        )

    async def write_many(self, calls: Iterable[CallLike]) -> None:
        """:meth:`write` for many calls (faster than a loop of ``write``)."""
        with self._lock:
            self._check()
        rules, limit = self._rules, self._batch_rows
        rows: list[Any] = []
        rejected: list[Rejected] = []
        redaction, counts = self._redact, dict[str, int]()  # redactions counted once for the call, not per row
        for call in calls:
            out = validate(call, rules)
            if redaction is not None:  # after validation: the row itself, no copy of the call
                out = redaction.result(out, counts)
            if type(out) is Rejected:
                rejected.append(out)
            else:
                rows.append(out)
            if len(rows) + len(rejected) >= limit:
                await self._add(rows, rejected, rules.extras)
                rows, rejected = [], []
        if rows or rejected:
            await self._add(rows, rejected, rules.extras)
        if counts and self._metrics:
            self._metrics.redacted(counts)

    async def flush(self) -> b.FlushResult:
        """Send what is buffered and wait until every batch so far is durable; the counts since the
        last flush (written, duplicates, quarantined...). Raises WriterError (with ``unwritten``)."""
        with self._lock:
            self._check()
            sealed = self._seal()
        if sealed is not None:
            await self._put(sealed)
        marker = _Marker()
        await self._put(marker)
        await self._wait(marker)
        with self._lock:
            self._check()
            return self._delta()

    @property
    def stats(self) -> b.FlushResult:
        """Counts since the writer opened (a copy)."""
        with self._lock:
            return self._total.copy()

    # begin async-only
    async def close(self) -> b.FlushResult:
        """Same as :meth:`aclose` (the name the sync :class:`callvault.ingest.Writer` uses)."""
        return await self.aclose()

    # end async-only
    async def aclose(self) -> b.FlushResult:
        """Send what is buffered, stop the sender, close the pool (if the writer made it).

        Idempotent. Raises WriterError (with every row not committed) if the writer had failed."""
        with self._lock:
            if self._closed:
                return b.FlushResult()
            self._closed = True  # from here on, write() refuses: nothing can slip in after the last batch
            sealed = self._seal()
        if sealed is not None:
            await self._put(sealed)
        if self._sender is not None:
            await self._put(_STOP)
            await self._join()  # it drains the queue up to the stop marker, then returns
        while True:  # batches a waiting producer enqueued after the stop marker
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            await self._handle(item)
        if self._own_pool and hasattr(self, "_pool"):
            await self._pool.close()
        with self._lock:
            if self._error is not None:
                raise self._failure()
            return self._delta()

    # -- internals -----------------------------------------------------------------------------
    def _redacted(self, out: Any) -> Any:
        assert self._redact is not None
        counts: dict[str, int] = {}
        out = self._redact.result(out, counts)
        if counts and self._metrics:
            self._metrics.redacted(counts)
        return out

    async def _add(self, rows: list[Any], rejected: list[Rejected], extras: tuple[Column, ...] = ()) -> None:
        early: b.Batch | None = None
        with self._lock:
            self._check()
            if self._current.shape.extras != extras:  # the table's columns changed: rows of one shape a batch
                early = self._seal()
                self._current.shape = Shape(extras)
            cur = self._current
            cur.rows += rows
            cur.rejected += rejected
            if self._started is None:
                self._started = time.monotonic()
            sealed = self._seal() if len(cur) >= self._batch_rows else None
        if early is not None:
            await self._put(early)
        if sealed is not None:
            await self._put(sealed)  # waits while max_pending batches are queued: back-pressure

    async def _put(self, item: object) -> None:
        """Queue for the sender (waiting for room: back-pressure)."""
        if self._metrics and isinstance(item, b.Batch):
            self._metrics.queued(1)  # waiting from now on, in the queue or for room in it (_handle takes it off)
        if True:  # ASYNC
            # shield: a caller's timeout/cancellation must not drop a batch already taken from the buffer
            await asyncio.shield(self._queue.put(item))
        else:
            while True:
                try:
                    self._queue.put(item, timeout=0.5)
                    return
                except queue.Full:
                    if self._sender is None or not self._sender.is_alive():
                        self._handle(item)  # the sender is gone (closed meanwhile): handle it here
                        return

    async def _wait(self, marker: _Marker) -> None:
        """Until the sender reaches ``marker`` or stops."""
        assert self._sender is not None
        if True:  # ASYNC
            done = asyncio.ensure_future(marker.done.wait())
            try:
                await asyncio.wait({done, self._sender}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                done.cancel()
        else:
            while not marker.done.wait(0.5) and self._sender.is_alive():
                pass

    async def _join(self) -> None:
        assert self._sender is not None
        if True:  # ASYNC
            await self._sender
        else:
            self._sender.join()

    def _seal(self) -> b.Batch | None:
        if not len(self._current):
            return None
        sealed, self._current, self._started = self._current, b.Batch(shape=self._current.shape), None
        return sealed

    def _delta(self) -> b.FlushResult:
        delta = self._total.minus(self._reported)
        self._reported = self._total.copy()
        return delta

    def _check(self) -> None:
        """WriterError when the writer failed, is closed, was never opened or lost its sender (under the lock)."""
        if self._error is not None:
            raise self._failure()
        if self._closed:
            raise WriterError("the writer is closed")
        if self._sender is None:
            raise WriterError("the writer is not open: use `async with AsyncWriter(...)` or `await writer.open()`")
        if self._sender.done():  # sync: if not self._sender.is_alive():
            raise WriterError("the writer's sender stopped unexpectedly; close it and open a new one")

    def _failure(self) -> WriterError:
        return b.failure(self._error, self._unwritten)

    async def _load_range(self, conn: AConn) -> LiveRange:
        cur = await conn.execute(catalog.BOUNDS_SQL, (catalog.parent_regclass(self.settings),))
        live = LiveRange(catalog.bounds_from_rows(await cur.fetchall()))
        cur = await conn.execute(catalog.SHAPE_SQL, (catalog.parent_regclass(self.settings),))
        shape = catalog.shape_from_rows(await cur.fetchall(), self.settings)  # the table's own columns too
        await conn.commit()
        base = self._base_rules
        self._rules = Rules(base.max_transcript_bytes, base.assume_utc, live, shape.extras)
        self._range_at = time.monotonic()
        return live

    async def _run(self) -> None:
        while True:
            try:
                if True:  # ASYNC
                    item = await asyncio.wait_for(self._queue.get(), timeout=self._flush_interval / 4)
                else:
                    item = waits.queue_get(self._queue, self._flush_interval / 4)  # any clock (callvault.waits)
            except (TimeoutError, queue.Empty):
                await self._idle()
                continue
            if item is _STOP:
                return
            await self._handle(item)

    async def _handle(self, item: object) -> None:
        if isinstance(item, _Marker):
            item.done.set()
        elif isinstance(item, b.Batch):
            if self._metrics:
                self._metrics.queued(-1)
            await self._send(item)

    async def _idle(self) -> None:
        with self._lock:
            old = self._started is not None and time.monotonic() - self._started >= self._flush_interval
            sealed = self._seal() if old else None
        if sealed is not None:
            await self._send(sealed)
        elif time.monotonic() - self._range_at > RANGE_REFRESH_S and self._error is None:
            with contextlib.suppress(Exception):
                async with self._pool.connection(timeout=CONNECT_WAIT_S) as conn:
                    await self._load_range(conn)  # new partitions are accepted before the next batch arrives

    async def _send(self, batch: b.Batch) -> None:
        if self._error is not None:
            self._unwritten.append(batch)
            return
        sent_at = time.monotonic()
        deadline, delay, retries = sent_at + self._retry_for, BACKOFF_START_S, 0
        while True:
            try:
                async with self._pool.connection(timeout=CONNECT_WAIT_S) as conn:
                    try:
                        result = await write_batch(conn, self.settings, batch, self._load_range)
                    except psycopg.Error as exc:
                        if b.on_standby(exc):
                            await conn.close()  # the pool discards it; the next one finds the new primary
                        raise
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
                batch.idempotent = True  # the last attempt may have committed: re-send without doubling
                retries += 1
                b.log_retry(exc, retries, delay)
                await asyncio.sleep(delay)  # sync: waits.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
        result.retries = retries
        if self._metrics:
            self._metrics.batch_done(result, time.monotonic() - sent_at)
        b.after_batch(result, self._on_quarantine)
        with self._lock:
            self._total.add(result)
