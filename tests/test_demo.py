"""The demo's main job end to end: init, synthetic calls, maintain, status, pruned EXPLAIN."""

from __future__ import annotations

import re

import psycopg

from tests.helpers import run


def test_demo_runs_twice_and_prunes(dsn: str) -> None:
    first = run("demo", "--dsn", dsn, "--calls", "800").stdout
    second = run("demo", "--dsn", dsn, "--calls", "800").stdout
    assert "already initialised" in second
    for out in (first, second):
        m = re.search(r"partitions scanned: (\d+) of (\d+)", out)
        assert m is not None, out
        scanned, total = int(m.group(1)), int(m.group(2))
        assert 1 <= scanned <= 2 < total  # a 7-day window touches at most two weekly partitions
        assert "healthy" in out
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM call_logs").fetchone() == (1600,)
        assert conn.execute("SELECT count(DISTINCT tenant_id) FROM call_logs").fetchone() == (20,)
