"""Progress of a long archive or restore: rows and bytes done, rate and ETA, per partition and step.

The library only reports; who watches decides how it looks: the CLI draws a progress line on a
terminal, the worker writes JSON log lines (``callvault.archive`` logger, ``archive progress``), a
program passes its own ``progress=`` callable to :func:`callvault.archive.pipeline.archive` or
:func:`callvault.archive.restore.restore`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressUpdate:
    """One report: ``operation`` (archive/restore) of ``partition`` at ``step`` (export, upload,
    verify, load), with what is done so far and, when known beforehand, the totals. ``done`` is set
    on the step's last report."""

    operation: str
    partition: str
    step: str
    rows: int
    bytes: int
    seconds: float
    rows_total: int | None = None
    bytes_total: int | None = None
    done: bool = False

    @property
    def rows_per_s(self) -> float:
        """Rows per second since the step started."""
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    @property
    def bytes_per_s(self) -> float:
        """Bytes per second since the step started."""
        return self.bytes / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the current rate (by rows, else by bytes), when a total is known."""
        if self.done:
            return 0.0
        for got, total, rate in ((self.rows, self.rows_total, self.rows_per_s),
                                 (self.bytes, self.bytes_total, self.bytes_per_s)):  # fmt: skip
            if total and rate > 0:
                return max(total - got, 0) / rate
        return None

    @property
    def fraction(self) -> float | None:
        """Share done (0..1), when a total is known."""
        if self.done:
            return 1.0
        if self.rows_total:
            return min(self.rows / self.rows_total, 1.0)
        if self.bytes_total:
            return min(self.bytes / self.bytes_total, 1.0)
        return None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready (the worker's ``archive progress`` log line)."""
        eta = self.eta_s
        return {
            "operation": self.operation, "partition": self.partition, "step": self.step, "rows": self.rows,
            "rows_total": self.rows_total, "bytes": self.bytes, "bytes_total": self.bytes_total,
            "seconds": round(self.seconds, 3), "rows_per_s": round(self.rows_per_s),
            "mb_per_s": round(self.bytes_per_s / 1e6, 1), "eta_s": None if eta is None else round(eta, 1),
            "done": self.done,
        }  # fmt: skip


Sink = Callable[[ProgressUpdate], None]


class Tracker:
    """Counts one partition's progress through its steps and hands updates to ``sink``, at most one
    every ``every`` seconds (and always the last of a step)."""

    def __init__(
        self,
        sink: Sink,
        operation: str,
        partition: str,
        *,
        rows_total: int | None = None,
        bytes_total: int | None = None,
        every: float = 0.5,
    ) -> None:
        self.sink, self.operation, self.partition, self.every = sink, operation, partition, every
        self.rows_total, self.bytes_total = rows_total, bytes_total
        self.step_name = ""
        self._rows = self._bytes = 0
        self._t0 = self._last = time.monotonic()
        self._totals: tuple[int | None, int | None] = (rows_total, bytes_total)

    def start(self, step: str, *, rows_total: int | None = None, bytes_total: int | None = None) -> None:
        """A new step: counters from zero, with this step's totals (default: the partition's)."""
        self.step_name = step
        self._rows = self._bytes = 0
        self._t0 = self._last = time.monotonic()
        self._totals = (rows_total if rows_total is not None else self.rows_total,
                        bytes_total if bytes_total is not None else self.bytes_total)  # fmt: skip
        self._emit(False)

    def advance(self, rows: int = 0, nbytes: int = 0) -> None:
        """``rows``/``nbytes`` more done in the current step."""
        self._rows += rows
        self._bytes += nbytes
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self._emit(False)

    def finish(self) -> None:
        """The current step is complete."""
        self._emit(True)

    def _emit(self, done: bool) -> None:
        rows_total, bytes_total = self._totals
        self.sink(ProgressUpdate(self.operation, self.partition, self.step_name, self._rows, self._bytes,
                                 time.monotonic() - self._t0, rows_total, bytes_total, done))  # fmt: skip
