"""PostgreSQL's own calendar arithmetic on ``timestamptz`` in a UTC session, as pure Python.

pg_partman decides what to premake with ``round(EXTRACT(epoch FROM age(a, b)) / EXTRACT(epoch FROM
interval))``. ``age()`` is *symbolic* (years, months, days, time) and ``EXTRACT(epoch ...)`` then
counts a month as 30 days and a year as 365.25 days, so the result is not ``(a - b) / interval``.
To predict pg_partman exactly, callvault computes the same thing the same way. Each function names
the PostgreSQL 15 C function it mirrors (``src/backend/utils/adt/timestamp.c``); a database test
(``tests/test_pgtime.py``) compares them with the real server on thousands of random pairs.

All of callvault's sessions run with ``timezone = 'UTC'`` (see :func:`callvault.db.connect` and the
pg_cron procedure), so "local time" below is UTC.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction

USECS_PER_SEC = 1_000_000
SECS_PER_DAY = 86_400
DAYS_PER_MONTH = 30  # datatype/timestamp.h: "assumes exactly 30 days per month"
SECS_PER_YEAR = 31_557_600  # (int64) (DAYS_PER_YEAR * SECS_PER_DAY), DAYS_PER_YEAR = 365.25


@dataclass(frozen=True)
class PgInterval:
    """Postgres' interval representation: months, days and microseconds, kept apart."""

    months: int = 0
    days: int = 0
    micros: int = 0

    def epoch(self) -> Fraction:
        """``EXTRACT(epoch FROM interval)`` (interval_part_common, PG 14+ numeric result), exact."""
        years, months = _cdiv(self.months, 12)
        secs = SECS_PER_YEAR * years + DAYS_PER_MONTH * SECS_PER_DAY * months + SECS_PER_DAY * self.days
        return Fraction(secs) + Fraction(self.micros, USECS_PER_SEC)


def _cdiv(a: int, b: int) -> tuple[int, int]:
    """C's integer division and remainder: truncate toward zero, remainder has the dividend's sign."""
    q = abs(a) // abs(b) * (1 if (a >= 0) == (b >= 0) else -1)
    return q, a - q * b


def _days_in_month(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1]


def age(a: datetime, b: datetime) -> PgInterval:
    """``age(a, b)`` for timestamptz in a UTC session (timestamptz_age).

    Field-wise difference, negative fields borrowed from the next higher one; a day borrow adds
    the length of the month of the *earlier* timestamp (``day_tab[isleap(tm?->tm_year)][tm?->tm_mon - 1]``).
    """
    t1, t2 = a.astimezone(UTC), b.astimezone(UTC)
    neg = t1 < t2
    fields = [
        t1.microsecond - t2.microsecond,
        t1.second - t2.second,
        t1.minute - t2.minute,
        t1.hour - t2.hour,
        t1.day - t2.day,
        t1.month - t2.month,
        t1.year - t2.year,
    ]
    if neg:
        fields = [-f for f in fields]
    usec, sec, minute, hour, mday, mon, year = fields
    while usec < 0:
        usec += USECS_PER_SEC
        sec -= 1
    while sec < 0:
        sec += 60
        minute -= 1
    while minute < 0:
        minute += 60
        hour -= 1
    while hour < 0:
        hour += 24
        mday -= 1
    earlier = t1 if neg else t2
    while mday < 0:
        mday += _days_in_month(earlier.year, earlier.month)
        mon -= 1
    while mon < 0:
        mon += 12
        year -= 1
    sign = -1 if neg else 1
    micros = ((hour * 60 + minute) * 60 + sec) * USECS_PER_SEC + usec
    return PgInterval(months=sign * (year * 12 + mon), days=sign * mday, micros=sign * micros)


def add(ts: datetime, iv: PgInterval) -> datetime:
    """``timestamptz + interval`` in a UTC session (timestamptz_pl_interval): months (day clamped to
    the month's end), then days, then microseconds."""
    t = ts.astimezone(UTC)
    if iv.months:
        year, month0 = divmod(t.year * 12 + t.month - 1 + iv.months, 12)
        t = t.replace(year=year, month=month0 + 1, day=min(t.day, _days_in_month(year, month0 + 1)))
    return t + timedelta(days=iv.days, microseconds=iv.micros)


def pg_round(q: Fraction) -> int:
    """``round(numeric)``: half away from zero (numeric division is exact enough here: the quotients
    pg_partman divides are whole microseconds over whole seconds, never within 1e-16 of a half)."""
    whole = (abs(q) + Fraction(1, 2)).__floor__()
    return int(whole if q >= 0 else -whole)


def intervals_between(later: datetime, earlier: datetime, iv: PgInterval) -> int:
    """``round(EXTRACT('epoch' FROM age(later, earlier)) / EXTRACT('epoch' FROM iv))``: pg_partman's count."""
    return pg_round(age(later, earlier).epoch() / iv.epoch())
