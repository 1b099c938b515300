"""callvault.pgtime against the real server: age(), interval epoch, round, timestamptz + interval."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import psycopg

from callvault import pgtime
from callvault.pgtime import PgInterval

STEPS = [PgInterval(days=1), PgInterval(days=7), PgInterval(months=1)]


def _instants(n: int, seed: int) -> list[datetime]:
    rng = random.Random(seed)
    base = datetime(2024, 1, 1, tzinfo=UTC)
    out = []
    for _ in range(n):
        t = base + timedelta(seconds=rng.randrange(0, 6 * 365 * 86400), microseconds=rng.randrange(0, 10**6))
        if rng.random() < 0.5:  # partition-like boundaries: midnight, Mondays, month starts
            t = t.replace(hour=0, minute=0, second=0, microsecond=0)
            if rng.random() < 0.3:
                t = t.replace(day=1)
        out.append(t)
    return out


def test_partman_count_matches_postgres(conn: psycopg.Connection) -> None:
    a, b = _instants(3000, 1), _instants(3000, 2)
    # near pairs too: the rounding edges sit within a few intervals
    b = [x if i % 2 else a[i] - timedelta(days=random.Random(i).uniform(-200, 200)) for i, x in enumerate(b)]
    rows = conn.execute(
        """SELECT extract(epoch FROM age(x, y)),
                  round(extract(epoch FROM age(x, y)) / extract(epoch FROM interval '1 day')),
                  round(extract(epoch FROM age(x, y)) / extract(epoch FROM interval '7 days')),
                  round(extract(epoch FROM age(x, y)) / extract(epoch FROM interval '1 mon')),
                  x + interval '1 mon', x - interval '3 mons 10 days'
           FROM unnest(%s::timestamptz[], %s::timestamptz[]) AS t(x, y)""",
        (a, b),
    ).fetchall()
    for x, y, (epoch, daily, weekly, monthly, plus_month, minus) in zip(a, b, rows, strict=True):
        assert pgtime.age(x, y).epoch() == Fraction(epoch), (x, y)
        got = [pgtime.intervals_between(x, y, s) for s in STEPS]
        assert got == [daily, weekly, monthly], (x, y)
        assert pgtime.add(x, PgInterval(months=1)) == plus_month
        assert pgtime.add(x, PgInterval(months=-3, days=-10)) == minus


def test_round_half_away_from_zero() -> None:
    assert pgtime.pg_round(Fraction(7, 2)) == 4 and pgtime.pg_round(Fraction(-7, 2)) == -4
    assert pgtime.pg_round(Fraction(349, 100)) == 3 and pgtime.pg_round(Fraction(-1, 3)) == 0
