"""``log_call``: the seed's one-call-per-request pattern, batched behind the scenes.

A web handler calls ``log_call(tenant_id=..., call_id=..., started_at=..., ...)``; the row joins a
process-wide :class:`Writer` (created on first use from ``CALLVAULT_DSN`` / the embedded default, or
set with :func:`configure`) and is committed within ``flush_interval`` (200 ms), in one COPY with
its neighbours. The writer is flushed and closed at interpreter exit; call :func:`flush` to wait for
durability explicitly.
"""

from __future__ import annotations

import atexit
import threading
from typing import Any

from callvault.config import Settings
from callvault.ingest._batch import FlushResult
from callvault.ingest.common import CallLike
from callvault.ingest.writer import Writer

_lock = threading.Lock()
_writer: Writer | None = None
_options: dict[str, Any] = {}


def configure(target: Settings | str | None = None, **writer_options: Any) -> None:
    """Choose the database (and Writer options) for ``log_call``; closes a previous default writer."""
    global _writer
    with _lock:
        old, _writer = _writer, None
        _options.clear()
        _options.update(writer_options, target=target)
    if old is not None:
        old.close()


def default_writer() -> Writer:
    global _writer
    with _lock:
        if _writer is None:
            opts = dict(_options)
            _writer = Writer(opts.pop("target", None), **opts)
        return _writer


def log_call(call: CallLike | None = None, /, **fields: Any) -> None:
    """Buffer one call (a ``Call``, a mapping, or the fields as keyword arguments)."""
    default_writer().write(call if call is not None else fields)


def flush() -> FlushResult:
    """Wait until every call logged so far is committed."""
    with _lock:
        writer = _writer
    return writer.flush() if writer is not None else FlushResult()


def close() -> None:
    global _writer
    with _lock:
        writer, _writer = _writer, None
    if writer is not None:
        writer.close()


atexit.register(close)
