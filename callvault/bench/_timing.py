"""Latency sampling shared by the read benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from psycopg import sql

from callvault.config import Settings
from callvault.db import Conn


def server_now(settings: Settings) -> datetime:
    """The database server's clock: every bench places its rows and its "at" by it (never this machine's
    clock), so a bench runs the same on any day and under a faked server clock."""
    from callvault.db import connect
    from callvault.db import server_now as now_of

    with connect(settings) as conn:
        return now_of(conn)


def timed(conn: Conn, query: sql.Composed, params: Sequence[Any]) -> list[float]:
    """Seconds per execution of ``query`` for each parameter set, after a warm-up pass over the same
    parameters (fills caches and crosses psycopg's prepare threshold, as a long-running app would)."""
    for p in params:
        conn.execute(query, p).fetchall()
    out = []
    for p in params:
        t0 = time.perf_counter()
        conn.execute(query, p).fetchall()
        out.append(time.perf_counter() - t0)
    return out


def pct(samples: list[float], q: int) -> float:
    """The q-th percentile in milliseconds, rounded to microseconds."""
    return round(statistics.quantiles(samples, n=100, method="inclusive")[q - 1] * 1000, 3)
