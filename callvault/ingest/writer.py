"""GENERATED from aio.py by scripts/async_to_sync.py: do not edit; edit the async source and run
``make sync-twins``. The synchronous twin of :mod:`callvault.ingest.aio` (see there for the why).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from callvault import catalog, waits
from callvault.columns import Column, Shape
from callvault.config import Settings
from callvault.db import Conn, probe, resolve_dsn
from callvault.errors import WriterError
from callvault.ingest import _batch as b
from callvault.ingest._sync_io import write_batch
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
from callvault.ingest.pools import FailoverPool
from callvault.ingest.redact import Redaction, as_redaction
from callvault.ingest.validate import DEFAULT_MAX_TRANSCRIPT_BYTES, LiveRange, Rejected, Rules, validate

POOL_NAME = "callvault-writer"


class _Marker:
    """Queued by flush(): when the sender reaches it, every batch queued before it is done."""

    def __init__(self) -> None:
        self.done = threading.Event()


_STOP = object()


def configure_connection(conn: Conn) -> None:
    conn.execute("SET timezone TO 'UTC'")
    conn.execute("SET synchronous_commit TO on")  # flush() means durable
    conn.commit()
    b.prepare_connection(conn)


class Writer:
    """Batching, idempotent, quarantining call-log writer: ``with Writer(...) as w``; ready when constructed,
    thread-safe (generated from its asyncio twin, :mod:`callvault.ingest.aio`).

    ``pool``: your own ``psycopg_pool`` pool instead of the writer's one-connection pool. Behind PgBouncer
    in transaction mode create it with ``kwargs={"prepare_threshold": None}`` (the writer's own pool does
    that, see ``CONNECT_KWARGS``); the writer does not change a pool it was given.

    ``metrics``: the Prometheus registry the writer counts on (rows written, duplicates, quarantined by
    reason, batches, flush latency, queue depth, retries, connection failures, redactions; see
    :mod:`callvault.ingest.instrument`); default ``prometheus_client.REGISTRY``, ``False`` for none.

    ``redact``: rewrite each call's transcript (and chosen metadata keys) before anything is written or
    quarantined: ``True`` for the built-in redactors (e-mail, phone, card, national id), a list of metadata
    keys to redact too, or a :class:`callvault.ingest.redact.Redaction`."""

    _pool: ConnectionPool[Any]

    def __init__(
        self,
        target: Settings | str | None = None,
        *,
        pool: ConnectionPool[Any] | None = None,
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
        self._lock = threading.Lock()
        self._current = b.Batch()
        self._started: float | None = None
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_pending)
        self._total, self._reported = b.FlushResult(), b.FlushResult()
        self._error: BaseException | None = None
        self._unwritten: list[b.Batch] = []
        self._sender: threading.Thread | None = None
        self._closed = False
        self.open()  # the sync writer is ready when constructed

    def open(self) -> Writer:
        """Connect (probing once: a wrong password or closed port raises at once, not after 30 s), check
        the table is initialised and the role may COPY, start the sender. Entering the ``with`` block
        calls it; opening an open writer does nothing. Raises AuthenticationFailed /
        DatabaseUnavailable / NotInitialised / WriterError."""
        if self._sender is not None:
            return self
        pool = self._pool_arg
        if pool is None:
            probe(resolve_dsn(self.settings))
            pool = FailoverPool(  # finds a new primary within ~2 s of a failover (ingest/pools.py)
                resolve_dsn(self.settings), min_size=1, max_size=1, open=False, name=POOL_NAME,
                configure=configure_connection, check=ConnectionPool.check_connection,
                kwargs=CONNECT_KWARGS,
            )  # fmt: skip
            pool.open()
        self._pool = pool
        try:
            with self._pool.connection() as conn:
                params = ready_params(self.settings)
                cur = conn.execute(READY_SQL, params)
                row = cur.fetchone()
                decide_role(row, self.settings)
                cur = conn.execute(QUARANTINE_SQL, params)
                decide_ready(row, cur.fetchone(), self.settings)
                self._load_range(conn)
        except BaseException:
            if self._own_pool:
                self._pool.close()
            raise
        self._sender = threading.Thread(target=self._run, name=POOL_NAME, daemon=True)
        self._sender.start()
        return self

    def __enter__(self) -> Writer:
        return self.open()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- producer side -----------------------------------------------------------------------
    def write(self, call: CallLike) -> None:
        """Validate one call and buffer it (a bad row is set aside for the quarantine, never raised);
        waits only when ``max_pending`` batches are queued (back-pressure). Raises WriterError once the
        writer has failed or is closed."""
        rules = self._rules
        out = validate(call, rules)
        if self._redact is not None:
            out = self._redacted(out)
        self._add([out] if type(out) is not Rejected else [], [out] if type(out) is Rejected else [], rules.extras)

    def write_many(self, calls: Iterable[CallLike]) -> None:
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
                self._add(rows, rejected, rules.extras)
                rows, rejected = [], []
        if rows or rejected:
            self._add(rows, rejected, rules.extras)
        if counts and self._metrics:
            self._metrics.redacted(counts)

    def flush(self) -> b.FlushResult:
        """Send what is buffered and wait until every batch so far is durable; the counts since the
        last flush (written, duplicates, quarantined...). Raises WriterError (with ``unwritten``)."""
        with self._lock:
            self._check()
            sealed = self._seal()
        if sealed is not None:
            self._put(sealed)
        marker = _Marker()
        self._put(marker)
        self._wait(marker)
        with self._lock:
            self._check()
            return self._delta()

    @property
    def stats(self) -> b.FlushResult:
        """Counts since the writer opened (a copy)."""
        with self._lock:
            return self._total.copy()

    def close(self) -> b.FlushResult:
        """Send what is buffered, stop the sender, close the pool (if the writer made it).

        Idempotent. Raises WriterError (with every row not committed) if the writer had failed."""
        with self._lock:
            if self._closed:
                return b.FlushResult()
            self._closed = True  # from here on, write() refuses: nothing can slip in after the last batch
            sealed = self._seal()
        if sealed is not None:
            self._put(sealed)
        if self._sender is not None:
            self._put(_STOP)
            self._join()  # it drains the queue up to the stop marker, then returns
        while True:  # batches a waiting producer enqueued after the stop marker
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            self._handle(item)
        if self._own_pool and hasattr(self, "_pool"):
            self._pool.close()
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

    def _add(self, rows: list[Any], rejected: list[Rejected], extras: tuple[Column, ...] = ()) -> None:
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
            self._put(early)
        if sealed is not None:
            self._put(sealed)  # waits while max_pending batches are queued: back-pressure

    def _put(self, item: object) -> None:
        """Queue for the sender (waiting for room: back-pressure)."""
        if self._metrics and isinstance(item, b.Batch):
            self._metrics.queued(1)  # waiting from now on, in the queue or for room in it (_handle takes it off)
        while True:
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                if self._sender is None or not self._sender.is_alive():
                    self._handle(item)  # the sender is gone (closed meanwhile): handle it here
                    return

    def _wait(self, marker: _Marker) -> None:
        """Until the sender reaches ``marker`` or stops."""
        assert self._sender is not None
        while not marker.done.wait(0.5) and self._sender.is_alive():
            pass

    def _join(self) -> None:
        assert self._sender is not None
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
            raise WriterError("the writer is not open: use `with Writer(...)` or `writer.open()`")
        if not self._sender.is_alive():
            raise WriterError("the writer's sender stopped unexpectedly; close it and open a new one")

    def _failure(self) -> WriterError:
        return b.failure(self._error, self._unwritten)

    def _load_range(self, conn: Conn) -> LiveRange:
        cur = conn.execute(catalog.BOUNDS_SQL, (catalog.parent_regclass(self.settings),))
        live = LiveRange(catalog.bounds_from_rows(cur.fetchall()))
        cur = conn.execute(catalog.SHAPE_SQL, (catalog.parent_regclass(self.settings),))
        shape = catalog.shape_from_rows(cur.fetchall(), self.settings)  # the table's own columns too
        conn.commit()
        base = self._base_rules
        self._rules = Rules(base.max_transcript_bytes, base.assume_utc, live, shape.extras)
        self._range_at = time.monotonic()
        return live

    def _run(self) -> None:
        while True:
            try:
                item = waits.queue_get(self._queue, self._flush_interval / 4)  # any clock (callvault.waits)
            except (TimeoutError, queue.Empty):
                self._idle()
                continue
            if item is _STOP:
                return
            self._handle(item)

    def _handle(self, item: object) -> None:
        if isinstance(item, _Marker):
            item.done.set()
        elif isinstance(item, b.Batch):
            if self._metrics:
                self._metrics.queued(-1)
            self._send(item)

    def _idle(self) -> None:
        with self._lock:
            old = self._started is not None and time.monotonic() - self._started >= self._flush_interval
            sealed = self._seal() if old else None
        if sealed is not None:
            self._send(sealed)
        elif time.monotonic() - self._range_at > RANGE_REFRESH_S and self._error is None:
            with contextlib.suppress(Exception), self._pool.connection(timeout=CONNECT_WAIT_S) as conn:
                self._load_range(conn)  # new partitions are accepted before the next batch arrives

    def _send(self, batch: b.Batch) -> None:
        if self._error is not None:
            self._unwritten.append(batch)
            return
        sent_at = time.monotonic()
        deadline, delay, retries = sent_at + self._retry_for, BACKOFF_START_S, 0
        while True:
            try:
                with self._pool.connection(timeout=CONNECT_WAIT_S) as conn:
                    try:
                        result = write_batch(conn, self.settings, batch, self._load_range)
                    except psycopg.Error as exc:
                        if b.on_standby(exc):
                            conn.close()  # the pool discards it; the next one finds the new primary
                        raise
                    if time.monotonic() - self._range_at > RANGE_REFRESH_S:
                        self._load_range(conn)
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
                waits.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
        result.retries = retries
        if self._metrics:
            self._metrics.batch_done(result, time.monotonic() - sent_at)
        b.after_batch(result, self._on_quarantine)
        with self._lock:
            self._total.add(result)
