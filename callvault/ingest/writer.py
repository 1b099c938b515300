"""The batching writer (threads). Producers call ``write``; a flusher thread COPYs batches.

Rows are validated in the caller's thread (bad ones are set aside with a reason), buffered, and
sent as one binary COPY per batch: when the batch is full, when its oldest row is
``flush_interval`` old, on ``flush()`` and on ``close()``. At most ``max_pending`` sealed batches
wait for the database; past that ``write`` blocks (back-pressure) instead of growing memory.
A lost connection or a restarted server is retried with backoff for ``retry_for`` seconds, re-sending
through the idempotent path, so nothing is lost and nothing doubled. If it still fails, the rows
are kept and every later call raises :class:`~callvault.errors.WriterError` carrying them.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any

from psycopg_pool import ConnectionPool

from callvault import catalog
from callvault.config import META_SCHEMA, Settings
from callvault.db import Conn, probe, resolve_dsn
from callvault.errors import NotInitialised, WriterError
from callvault.ingest import _batch as b
from callvault.ingest._sync_io import write_batch
from callvault.ingest.call import Call
from callvault.ingest.instrument import MetricsArg, WriterMetrics
from callvault.ingest.validate import DEFAULT_MAX_TRANSCRIPT_BYTES, LiveRange, Rejected, Rules, validate

# ~6 MB of 1.2 KB rows: amortises COPY start-up and the commit's WAL flush, while a batch still
# commits in well under 100 ms at COPY speed.
DEFAULT_BATCH_ROWS = 5_000
DEFAULT_FLUSH_INTERVAL = 0.2  # seconds a buffered row may wait before it is sent
DEFAULT_MAX_PENDING = 4  # sealed batches queued for the flusher before write() blocks
DEFAULT_RETRY_FOR = 60.0  # seconds a batch is re-sent after connection failures before giving up
RANGE_REFRESH_S = 30.0  # how stale the live partition range may get (maintenance runs every 15 min)
BACKOFF_START_S, BACKOFF_MAX_S = 0.1, 5.0
CONNECT_WAIT_S = 5.0  # per attempt, waiting for the pool to hand out a (re)connected connection

APPLICATION_NAME = "callvault-writer"  # visible in pg_stat_activity

# Bound every wait on the network, so retry_for really bounds a dead or half-open connection.
# prepare_threshold=None: no server-side prepared statements, which PgBouncer 1.18 in transaction mode
# would leave on a server connection the next transaction does not get ("_pg3_0" already exists).
CONNECT_KWARGS: dict[str, Any] = {
    "application_name": APPLICATION_NAME, "connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30,
    "keepalives_interval": 10, "keepalives_count": 3, "tcp_user_timeout": 60_000, "prepare_threshold": None,
}  # fmt: skip

CallLike = Call | Mapping[str, Any]


class _Marker:
    """Queued by flush(): when the flusher reaches it, every batch queued before it is done."""

    def __init__(self) -> None:
        self.done = threading.Event()


_STOP = object()


def configure_connection(conn: Conn) -> None:
    conn.execute("SET timezone TO 'UTC'")
    conn.execute("SET synchronous_commit TO on")  # flush() means durable
    conn.commit()
    b.prepare_connection(conn)


# The statements both writers run at start-up, in order; the decisions are shared (pure) code. The role
# check comes first: a role bound by row-level security may not even see callvault's schema.
READY_SQL = "SELECT row_security_active(to_regclass(%(parent)s)), current_user, to_regclass(%(parent)s) IS NOT NULL"
QUARANTINE_SQL = "SELECT to_regclass(%(quarantine)s) IS NOT NULL"


def ready_params(settings: Settings) -> dict[str, str]:
    return {"parent": catalog.parent_regclass(settings), "quarantine": f"{META_SCHEMA}.quarantine"}


def decide_role(row: tuple[Any, ...] | None, settings: Settings) -> None:
    """WriterError when row-level security binds the writer's role (Postgres refuses COPY for it)."""
    if row and row[0]:
        raise WriterError(
            f"role {row[1]} is subject to row-level security on {settings.qualified}, and Postgres refuses COPY for "
            f"such roles: connect the writer as the trusted ingest role ({settings.roles.ingest}, made by "
            "`callvault init --roles`), or write one tenant's calls with callvault.tenancy.TenantWriter"
        )


def decide_ready(row: tuple[Any, ...] | None, quarantine: tuple[Any, ...] | None, settings: Settings) -> None:
    """NotInitialised (exit 66) when the table or its quarantine is missing: at start-up, not at the
    first batch. Pure; both writers call it."""
    if row is None or not row[2] or quarantine is None or not quarantine[0]:
        raise NotInitialised(f"{settings.qualified} or its quarantine table is missing: run `callvault init` first")


def check_ready(conn: Conn, settings: Settings) -> LiveRange:
    params = ready_params(settings)
    row = conn.execute(READY_SQL, params).fetchone()
    decide_role(row, settings)
    decide_ready(row, conn.execute(QUARANTINE_SQL, params).fetchone(), settings)
    live = LiveRange(catalog.partition_bounds(conn, settings))
    conn.commit()
    return live


def as_settings(target: Settings | str | None) -> Settings:
    if isinstance(target, Settings):
        return target
    from callvault.config import from_env

    return from_env(dsn=target)


class Writer:
    """Batching, idempotent, quarantining call-log writer. Thread-safe; use as a context manager.

    ``pool``: your own ``psycopg_pool.ConnectionPool`` instead of the writer's one-connection pool.
    Behind PgBouncer in transaction mode create it with ``kwargs={"prepare_threshold": None}`` (the
    writer's own pool does that); the writer does not change a pool it was given.

    ``metrics``: the Prometheus registry the writer counts on (rows written, duplicates, quarantined by
    reason, batches, flush latency, queue depth, retries, connection failures; see
    :mod:`callvault.ingest.instrument`); default ``prometheus_client.REGISTRY``, ``False`` for none."""

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
    ) -> None:
        self.settings = as_settings(target)
        self._metrics = WriterMetrics.of(metrics, self.settings.qualified)  # callvault.ingest.instrument
        self._batch_rows, self._flush_interval, self._retry_for = batch_rows, flush_interval, retry_for
        self._on_quarantine = on_quarantine  # called (from the sender) with each durable batch's quarantined rows
        self._own_pool = pool is None
        if pool is None:
            probe(resolve_dsn(self.settings))  # a wrong password or closed port: say so now, not after 30 s
        self._pool: ConnectionPool[Any] = pool or ConnectionPool(
            resolve_dsn(self.settings), min_size=1, max_size=1, open=True, name="callvault-writer",
            configure=configure_connection, check=ConnectionPool.check_connection,
            kwargs=CONNECT_KWARGS,
        )  # fmt: skip
        self._base_rules = Rules(max_transcript_bytes=max_transcript_bytes, assume_utc=assume_utc)
        try:
            with self._pool.connection() as conn:
                self._set_range(check_ready(conn, self.settings))
        except BaseException:
            if self._own_pool:
                self._pool.close()
            raise
        self._lock = threading.Lock()
        self._current = b.Batch()
        self._started: float | None = None
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_pending)
        self._total, self._reported = b.FlushResult(), b.FlushResult()
        self._error: BaseException | None = None
        self._unwritten: list[b.Batch] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="callvault-writer", daemon=True)
        self._thread.start()

    # -- producer side -----------------------------------------------------------------------
    def write(self, call: CallLike) -> None:
        """Validate and buffer one call. Blocks only when the database is behind (back-pressure)."""
        out = validate(call, self._rules)
        self._add([out] if type(out) is not Rejected else [], [out] if type(out) is Rejected else [])

    def write_many(self, calls: Iterable[CallLike]) -> None:
        """Validate and buffer many calls (faster than a loop of ``write``)."""
        with self._lock:
            self._check_locked()
        rules, limit = self._rules, self._batch_rows
        rows: list[Any] = []
        rejected: list[Rejected] = []
        for call in calls:
            out = validate(call, rules)
            if type(out) is Rejected:
                rejected.append(out)
            else:
                rows.append(out)
            if len(rows) + len(rejected) >= limit:
                self._add(rows, rejected)
                rows, rejected = [], []
        if rows or rejected:
            self._add(rows, rejected)

    def flush(self) -> b.FlushResult:
        """Send everything buffered; return once it is committed. Counts are since the last flush."""
        with self._lock:
            self._check_locked()
            sealed = self._seal_locked()
        if sealed is not None:
            self._put(sealed)
        marker = _Marker()
        self._put(marker)
        while not marker.done.wait(0.5):
            if not self._thread.is_alive() and not marker.done.is_set():
                with self._lock:
                    self._check_locked()
                raise WriterError("the writer's flusher stopped unexpectedly; close it and check the logs")
        with self._lock:
            self._check_locked()
            return self._delta_locked()

    @property
    def stats(self) -> b.FlushResult:
        """Cumulative counts since the writer opened."""
        with self._lock:
            return self._total.copy()

    def close(self) -> b.FlushResult:
        """Send what is buffered, stop the flusher, close the pool (if the writer made it).

        Idempotent. Raises WriterError (with every row not committed) if the writer had failed."""
        with self._lock:
            if self._closed:
                return b.FlushResult()
            self._closed = True  # from here on, write() refuses: nothing can slip in after the last batch
            sealed = self._seal_locked()
        if sealed is not None:
            self._put(sealed)
        self._put(_STOP)
        self._thread.join()
        while True:  # batches a blocked producer enqueued after the stop marker
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            self._handle(item)
        if self._own_pool:
            self._pool.close()
        with self._lock:
            if self._error is not None:
                raise self._failure()
            return self._delta_locked()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------
    def _add(self, rows: list[Any], rejected: list[Rejected]) -> None:
        with self._lock:
            self._check_locked()
            cur = self._current
            cur.rows += rows
            cur.rejected += rejected
            if self._started is None:
                self._started = time.monotonic()
            sealed = self._seal_locked() if len(cur) >= self._batch_rows else None
        if sealed is not None:
            self._put(sealed)  # blocks while max_pending batches wait: back-pressure

    def _put(self, item: object) -> None:
        """Queue for the flusher; if the flusher is gone (closed meanwhile), handle it here."""
        if self._metrics and isinstance(item, b.Batch):
            self._metrics.queued(1)  # waiting from now on, in the queue or for room in it (_handle takes it off)
        while True:
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    self._handle(item)
                    return

    def _seal_locked(self) -> b.Batch | None:
        if not len(self._current):
            return None
        sealed, self._current, self._started = self._current, b.Batch(), None
        return sealed

    def _delta_locked(self) -> b.FlushResult:
        delta = self._total.minus(self._reported)
        self._reported = self._total.copy()
        return delta

    def _check_locked(self) -> None:
        if self._error is not None:
            raise self._failure()
        if self._closed:
            raise WriterError("the writer is closed")

    def _failure(self) -> WriterError:
        return b.failure(self._error, self._unwritten)

    def _set_range(self, live: LiveRange) -> None:
        self._rules = Rules(self._base_rules.max_transcript_bytes, self._base_rules.assume_utc, live)
        self._range_at = time.monotonic()

    def _load_range(self, conn: Conn) -> LiveRange:
        live = LiveRange(catalog.partition_bounds(conn, self.settings))
        conn.commit()
        self._set_range(live)
        return live

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self._flush_interval / 4)
            except queue.Empty:
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
            sealed = self._seal_locked() if old else None
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
                    result = write_batch(conn, self.settings, batch, self._load_range)
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
                time.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
        result.retries = retries
        if self._metrics:
            self._metrics.batch_done(result, time.monotonic() - sent_at)
        b.after_batch(result, self._on_quarantine)
        with self._lock:
            self._total.add(result)
