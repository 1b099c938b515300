"""Logging: one standard :mod:`logging` logger per capability, under ``callvault``.

Library code logs with ``get_logger("archive")`` (``callvault.archive``) and never configures
logging: the ``callvault`` logger has a :class:`logging.NullHandler`, so nothing is printed unless the
application configures logging (the CLI does, with :func:`configure`). Records carry key=value text in
the message (readable by any handler) and the same fields as ``record.fields`` (a dict) for structured
handlers; :func:`event` does both.

What is never logged: transcripts, metadata or any other call content. Tenant ids, partition names,
counts, sizes, durations and error messages are.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TextIO

ROOT = "callvault"

logging.getLogger(ROOT).addHandler(logging.NullHandler())


def get_logger(capability: str) -> logging.Logger:
    """The logger of one capability: ``callvault.<capability>`` (e.g. ``archive``, ``maintain``)."""
    return logging.getLogger(f"{ROOT}.{capability}")


def _value(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, list | tuple | set | frozenset):
        items: Iterable[object] = sorted(v, key=str) if isinstance(v, set | frozenset) else v
        return "[" + ",".join(_value(x) for x in items) + "]"
    text = str(v)
    if not text or any(c.isspace() or c in "\"'=" for c in text):
        return json.dumps(text)
    return text


def kv(**fields: object) -> str:
    """``a=1 b=[x,y] c="two words"``: fields as key=value text (strings with spaces are quoted)."""
    return " ".join(f"{k}={_value(v)}" for k, v in fields.items())


def event(logger: logging.Logger, level: int, what: str, /, **fields: object) -> None:
    """Log ``what k=v ...`` at ``level``, with ``fields`` also on the record as ``record.fields``."""
    if logger.isEnabledFor(level):
        text = f"{what} {kv(**fields)}" if fields else what
        logger.log(level, "%s", text, extra={"fields": fields}, stacklevel=2)


# ---------------------------------------------------------------- application side (the CLI)

TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"
_RESERVED = ("ts", "event", "level", "logger", "message")


def json_line(event: str, at: datetime | None = None, /, **fields: object) -> str:
    """One JSON line as callvault writes them all (the worker's events, log records under ``worker``):
    ``ts`` (UTC, milliseconds; default now), ``event``, then ``fields`` (non-JSON values as their ``str``)."""
    line = {"ts": (at or datetime.now(UTC)).isoformat(timespec="milliseconds"), "event": event, **fields}
    return json.dumps(line, default=str)


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record, shaped like the worker's own lines: ``ts``, ``event: "log"``,
    ``level``, ``logger``, ``message`` and the record's fields (never overriding those five)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON (non-JSON values as their ``str``)."""
        line: dict[str, object] = {"level": record.levelname, "logger": record.name, "message": record.getMessage()}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update({k: v for k, v in fields.items() if k not in _RESERVED})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json_line("log", datetime.fromtimestamp(record.created, UTC), **line)


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is at the time of the record (test runners swap it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def level_for(verbosity: int) -> int:
    """-1 (``-q``): CRITICAL (nothing but the error line); 0: ERROR (an error stays one line); 1
    (``-v``): INFO, warnings included (lock retries...); 2 or more (``-vv``): DEBUG."""
    if verbosity < 0:
        return logging.CRITICAL
    return {0: logging.ERROR, 1: logging.INFO}.get(verbosity, logging.DEBUG)


def configure(verbosity: int = 0, *, json_lines: bool = False) -> int:
    """For applications (the CLI): set the ``callvault`` logger's level from ``verbosity`` (see
    :func:`level_for`) and send its records to stderr, as ``LEVEL callvault.x: message`` or, with
    ``json_lines``, as JSON lines. Calling it again replaces the handler it installed. Returns the level."""
    root = logging.getLogger(ROOT)
    for h in list(root.handlers):
        if isinstance(h, _StderrHandler):
            root.removeHandler(h)
    handler = _StderrHandler()
    handler.setFormatter(JsonLineFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    level = level_for(verbosity)
    root.setLevel(level)
    return level


@contextmanager
def scoped() -> Iterator[None]:
    """Undo :func:`configure` on exit: the ``callvault`` logger's level and handlers as they were (the CLI
    run in-process, e.g. by tests, leaves logging as it found it)."""
    root = logging.getLogger(ROOT)
    level, handlers = root.level, list(root.handlers)
    try:
        yield
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers
