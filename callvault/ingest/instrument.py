"""Prometheus metrics of the writers, inside the application process.

``Writer``/``AsyncWriter`` count on the application's registry (``prometheus_client.REGISTRY``) unless
given another one (``metrics=registry``) or told not to (``metrics=False``). Every writer of a process
that uses the same registry and table shares its series (label ``table``), so two writers of one table
add up, as one application's writes should. Serve them the way the application serves its other
metrics (e.g. ``prometheus_client.start_http_server``).

==========================================  =========  ==============================================
metric                                      type       what
==========================================  =========  ==============================================
callvault_writer_rows_written_total         counter    rows committed
callvault_writer_rows_duplicate_total       counter    rows skipped: already in the table (re-sends)
callvault_writer_rows_quarantined_total     counter    rows set aside, by ``reason`` (a code, below)
callvault_writer_batches_total              counter    batches committed, by ``path`` (copy, idempotent)
callvault_writer_flush_seconds              histogram  a batch's time from its first send to its commit
callvault_writer_queue_batches              gauge      sealed batches waiting for the database
callvault_writer_retries_total              counter    batches re-sent after a connection failure
callvault_writer_connection_failures_total  counter    sends that met a lost connection or server
callvault_writer_failures_total             counter    times a writer gave up (rows kept in WriterError)
==========================================  =========  ==============================================

Reasons are :data:`callvault.ingest.reasons.CODES` (``no_partition``, ``too_old``, ``bad_timestamp``...),
the same codes ``callvault_quarantine_rows`` uses.
"""

from __future__ import annotations

import weakref
from typing import Literal

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from callvault.ingest import reasons
from callvault.ingest._batch import FlushResult
from callvault.ingest.redact import KINDS

FLUSH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
MetricsArg = CollectorRegistry | Literal[False] | None


class _Families:
    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(name, doc, ["table", *labels], registry=registry)

        self.written = counter("callvault_writer_rows_written", "Rows the callvault writer committed.")
        self.duplicates = counter(
            "callvault_writer_rows_duplicate", "Rows the writer skipped because the table already had them."
        )
        self.quarantined = counter(
            "callvault_writer_rows_quarantined",
            "Rows the writer set aside in callvault.quarantine, by reason.",
            "reason",
        )
        self.batches = counter("callvault_writer_batches", "Batches the writer committed, by path.", "path")
        self.retries = counter("callvault_writer_retries", "Batches re-sent after a connection failure.")
        self.conn_failures = counter(
            "callvault_writer_connection_failures", "Sends that met a lost connection or a restarting server."
        )
        self.failures = counter("callvault_writer_failures", "Times a writer gave up; its rows are in WriterError.")
        self.redactions = counter(
            "callvault_writer_redactions", "Values the writer's redaction replaced before writing, by kind.", "kind"
        )
        self.flush = Histogram(
            "callvault_writer_flush_seconds", "Seconds from a batch's first send to its commit.", ["table"],
            buckets=FLUSH_BUCKETS, registry=registry,
        )  # fmt: skip
        self.queue = Gauge(
            "callvault_writer_queue_batches", "Sealed batches waiting for the database.", ["table"], registry=registry
        )


_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, _Families] = weakref.WeakKeyDictionary()


def _families(registry: CollectorRegistry) -> _Families:
    fams = _BY_REGISTRY.get(registry)
    if fams is None:
        fams = _BY_REGISTRY[registry] = _Families(registry)
    return fams


class WriterMetrics:
    """One writer's handle on its table's series. ``WriterMetrics.of(False, ...)`` is ``None``."""

    def __init__(self, registry: CollectorRegistry, table: str) -> None:
        f = _families(registry)
        self.table = table
        self._f = f
        self._written = f.written.labels(table)
        self._duplicates = f.duplicates.labels(table)
        self._retries = f.retries.labels(table)
        self._conn_failures = f.conn_failures.labels(table)
        self._failures = f.failures.labels(table)
        self._flush = f.flush.labels(table)
        self._queue = f.queue.labels(table)
        for path in ("copy", "idempotent"):
            f.batches.labels(table, path)  # present at 0 from the start: rate() needs the first sample
        for code in reasons.CODES:
            f.quarantined.labels(table, code)
        for kind in (*KINDS, "custom"):
            f.redactions.labels(table, kind)

    @classmethod
    def of(cls, metrics: MetricsArg, table: str) -> WriterMetrics | None:
        """The writer's metrics from its ``metrics=`` argument: None -> the default registry."""
        if metrics is False:
            return None
        return cls(REGISTRY if metrics is None else metrics, table)

    def queued(self, n: int) -> None:
        """A batch entered (+1) or left (-1) the queue."""
        self._queue.inc(n)

    def batch_done(self, result: FlushResult, seconds: float) -> None:
        """A batch became durable: its counts, path and latency."""
        self._written.inc(result.written)
        self._duplicates.inc(result.duplicates)
        self._f.batches.labels(self.table, "idempotent" if result.fallbacks else "copy").inc()
        for r in result.rejected:
            self._f.quarantined.labels(self.table, reasons.code(r.reason)).inc()
        self._flush.observe(seconds)

    def redacted(self, counts: dict[str, int]) -> None:
        """A call's redaction replaced ``counts`` values by kind (email, phone, card, national_id, custom)."""
        for kind, n in counts.items():
            self._f.redactions.labels(self.table, kind).inc(n)

    def retry(self) -> None:
        """A send met a connection failure and the batch will be sent again."""
        self._conn_failures.inc()
        self._retries.inc()

    def gave_up(self, connection_failure: bool) -> None:
        """The writer failed for good (its rows are kept in the error)."""
        if connection_failure:
            self._conn_failures.inc()
        self._failures.inc()
