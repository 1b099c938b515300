"""``callvault worker``: archive, maintenance and archive pruning on a schedule, one instance at a time.

* One instance per table: a session-level advisory lock held on its own connection for the worker's
  life; a second worker exits 75 (``AlreadyRunning``) at once.
* Each cycle: ``archive`` (detach concurrently, export, upload, verify, drop), then ``maintain``
  (pg_partman premake; its retention finds nothing left to detach), then ``prune``.
* SIGTERM/SIGINT: the current step finishes (or is abandoned; the archive journal resumes it), no new
  partition or step starts, the worker exits 0.
* One JSON line per event on stderr (``ts``, ``event``, details), for journald/Kubernetes logs.
* ``callvault.worker_status`` records the last cycle start, the last good cycle and the last error;
  ``status`` shows it and ``health`` fails when the last good cycle is older than three periods.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

import psycopg
from psycopg import sql

from callvault import locks, logs, waits
from callvault.archive.journal import ensure_tables
from callvault.archive.pipeline import archive
from callvault.archive.progress import ProgressUpdate, Sink
from callvault.archive.prune import prune
from callvault.config import META_SCHEMA, Settings
from callvault.db import Conn, connect, require_primary, resolve_dsn, server_now
from callvault.errors import CallvaultError, DatabaseUnavailable, InvalidSetting, NotPrimary
from callvault.history import last_run as last_run  # re-exported: the heartbeat the worker writes
from callvault.maintain import maintain

if TYPE_CHECKING:
    from callvault.metrics import MetricsServer

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
RECONNECT_FOR_S = 300.0  # a lost primary is looked for this long (a Patroni failover takes ~ttl: 30 s)
RECONNECT_WAIT_S = 1.0
_STATUS = sql.Identifier(META_SCHEMA, "worker_status")


def parse_every(text: str) -> int:
    """'15m' -> 900 seconds (s, m, h, d units)."""
    t = text.strip().lower()
    try:
        n, unit = (int(t[:-1]), t[-1]) if t[-1:] in _UNITS else (int(t), "s")
    except ValueError:
        raise InvalidSetting(f"--every {text!r} is not a period: use e.g. 30s, 15m, 1h") from None
    if n <= 0:
        raise InvalidSetting(f"--every {text!r} must be positive")
    return n * _UNITS[unit]


@dataclass
class WorkerOptions:
    every_s: int = 900
    store_url: str | None = None
    fmt: str = "parquet"
    once: bool = False
    prune: bool = True
    metrics_port: int | None = None  # serve /metrics and /healthz here (callvault.metrics.MetricsServer)
    metrics_host: str = ""


class Log:
    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream

    def __call__(self, event: str, **fields: Any) -> None:
        self.stream.write(logs.json_line(event, **fields) + "\n")
        self.stream.flush()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _lock(conn: Conn, settings: Settings) -> None:
    locks.acquire(
        conn, settings, "worker", f"a worker for {settings.qualified} is already running; only one may run at a time"
    )


def _beat(conn: Conn, settings: Settings, every_s: int, **cols: Any) -> None:
    names = ["parent_table", "pid", "host", "every_seconds", *cols]
    values = [settings.qualified, os.getpid(), socket.gethostname(), every_s, *cols.values()]
    updates = sql.SQL(", ").join(sql.SQL("{0} = excluded.{0}").format(sql.Identifier(n)) for n in names[1:])
    conn.execute(
        sql.SQL(
            "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT (parent_table) DO UPDATE SET {}, updated_at = now()"
        ).format(
            _STATUS,
            sql.SQL(", ").join(map(sql.Identifier, names)),
            sql.SQL(", ").join(sql.Placeholder() * len(names)),
            updates,
        ),
        values,
    )


EXPIRE_ROWS_PER_CYCLE = 200_000  # transcripts emptied per worker cycle at most: WAL and bloat stay bounded
PROGRESS_EVERY_S = 10.0  # a progress line per partition and step at most this often (and at its end)


def progress_lines(log: Log, every: float = PROGRESS_EVERY_S) -> Sink:
    """A progress sink writing ``{"event": "progress", ...}`` JSON lines (rows, bytes, rate, ETA)."""
    last: dict[tuple[str, str], float] = {}

    def sink(u: ProgressUpdate) -> None:
        key = (u.partition, u.step)
        now = time.monotonic()
        if u.done or key not in last or now - last[key] >= every:
            last[key] = now
            log("progress", **u.to_dict())

    return sink


def cycle(settings: Settings, opts: WorkerOptions, log: Log, stop: Callable[[], bool]) -> bool:
    """One archive + maintain + prune pass; True when every step succeeded."""
    ok = True
    t0 = time.perf_counter()
    try:
        rep = archive(settings, store_url=opts.store_url, format=opts.fmt, should_stop=stop,
                      progress=progress_lines(log))  # fmt: skip
        for p in rep.partitions:
            log("archive", partition=p.partition, step_before=p.step_before, step_after=p.step_after,
                rows=p.rows, bytes=p.bytes, seconds=round(p.seconds, 3), error=p.error)  # fmt: skip
        if rep.failed:
            ok = False
    except (CallvaultError, psycopg.Error) as exc:
        log("error", step="archive", error=str(exc))
        ok = False
    if not stop():
        try:
            m = maintain(settings, wait=True)
            log("maintain", created=m.created, detached=m.detached, seconds=round(m.seconds, 3))
        except (CallvaultError, psycopg.Error) as exc:
            log("error", step="maintain", error=str(exc))
            ok = False
    if opts.prune and not stop():
        try:
            pr = prune(settings, store_url=opts.store_url)
            log("prune", deleted=pr.deleted)
        except (CallvaultError, psycopg.Error) as exc:
            log("error", step="prune", error=str(exc))
            ok = False
    if not stop():
        from callvault.privacy.transcripts import expire

        try:  # transcripts past their own time (callvault privacy transcripts); bounded per cycle
            ex = expire(settings, store_url=opts.store_url, max_rows=EXPIRE_ROWS_PER_CYCLE)
            if ex.hot_rows or ex.archive_periods or ex.more:
                log("transcripts", hot_rows=ex.hot_rows, batches=ex.batches, wal_bytes=ex.wal_bytes,
                    archive_periods=ex.archive_periods, more=ex.more)  # fmt: skip
        except (CallvaultError, psycopg.Error) as exc:
            log("error", step="transcripts", error=str(exc))
            ok = False
    log("cycle", ok=ok, seconds=round(time.perf_counter() - t0, 3), stopped=stop())
    return ok


def run(
    settings: Settings, opts: WorkerOptions, log: Log | None = None, stop_event: threading.Event | None = None
) -> int:
    """Run until SIGTERM/SIGINT (or once). Returns the process exit code."""
    log = log or Log()
    stop = stop_event or threading.Event()
    previous: dict[signal.Signals, Any] = {}
    server: MetricsServer | None = None
    if threading.current_thread() is threading.main_thread():

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log("signal", signal=signal.Signals(signum).name, action="finishing the current step, then exiting")
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        ok, started, lost_at = True, False, None
        while not stop.is_set():
            try:
                with connect(settings, autocommit=True) as conn:
                    require_primary(conn, resolve_dsn(settings), "the worker")
                    ensure_tables(conn)
                    _lock(conn, settings)
                    if lost_at is not None:
                        log("reconnected", after_s=round(time.monotonic() - lost_at, 1), host=conn.info.host,
                            port=conn.info.port)  # fmt: skip
                        lost_at = None
                    if not started:
                        log("start", table=settings.qualified, every_s=opts.every_s, pid=os.getpid())
                        started = True
                    if server is None and opts.metrics_port is not None:
                        from callvault.metrics import MetricsServer

                        server = MetricsServer(settings, opts.metrics_port, opts.metrics_host).start()
                        log("metrics", port=server.port, host=opts.metrics_host or "*",
                            paths=["/metrics", "/healthz"])  # fmt: skip
                    while not stop.is_set():
                        _beat(conn, settings, opts.every_s, cycle_started=server_now(conn))
                        ok = cycle(settings, opts, log, stop.is_set)
                        if ok:
                            _beat(conn, settings, opts.every_s, cycle_ok=server_now(conn), last_error=None)
                        else:
                            _beat(conn, settings, opts.every_s, last_error="last cycle had errors: see the worker log")
                        if opts.once:
                            log("stop", reason="once")
                            return 0 if ok else 1
                        waits.event_wait(stop, opts.every_s)
            except (psycopg.OperationalError, psycopg.InterfaceError, NotPrimary, DatabaseUnavailable) as exc:
                # The primary went away (a failover, a restart): find it again (a multi-host DSN with
                # target_session_attrs=read-write reaches the new one) within RECONNECT_FOR_S.
                if not started:
                    raise  # a wrong DSN or a standby at start: one line, not a retry loop
                now = time.monotonic()
                lost_at = lost_at or now
                if now - lost_at > RECONNECT_FOR_S:
                    raise DatabaseUnavailable(
                        f"the worker found no primary for {RECONNECT_FOR_S:.0f} s ({_first_line(exc)}): it stops; "
                        "start it again once the database has a primary"
                    ) from exc
                log("connection lost", error=_first_line(exc), retry_in_s=RECONNECT_WAIT_S)
                waits.event_wait(stop, RECONNECT_WAIT_S)
        log("stop", reason="signal")
        return 0
    finally:
        if server is not None:
            server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
