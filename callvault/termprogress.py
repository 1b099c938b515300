"""Progress of ``archive`` and ``restore`` on a terminal: one line per partition and step (rows,
megabytes, rate, ETA), drawn on stderr with rich, only when stderr is a terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from callvault.archive.progress import ProgressUpdate, Sink


def _line(u: ProgressUpdate) -> str:
    rows = f"{u.rows:,}" + (f"/{u.rows_total:,}" if u.rows_total else "") + " rows" if u.rows or u.rows_total else ""
    mb = f"{u.bytes / 1e6:,.1f}" + (f"/{u.bytes_total / 1e6:,.1f}" if u.bytes_total else "") + " MB"
    rate = f"{u.rows_per_s:,.0f} rows/s" if u.rows else f"{u.bytes_per_s / 1e6:,.1f} MB/s"
    eta = u.eta_s
    left = "done" if u.done else (f"ETA {eta:,.0f} s" if eta is not None else "")
    return "  ".join(p for p in (f"{u.partition} {u.step}", rows, mb, rate, left) if p)


@contextmanager
def terminal_progress(enabled: bool | None = None) -> Iterator[Sink | None]:
    """A progress sink drawing on stderr, or None when stderr is not a terminal (``enabled`` forces)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    tasks: dict[tuple[str, str], Any] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), console=Console(stderr=True)) as bar:

        def sink(u: ProgressUpdate) -> None:
            key = (u.partition, u.step)
            if key not in tasks:
                tasks[key] = bar.add_task(_line(u), total=1.0)
            fraction = u.fraction
            bar.update(tasks[key], description=_line(u), completed=fraction if fraction is not None else 0.0)

        yield sink
