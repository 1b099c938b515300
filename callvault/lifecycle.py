"""Lifecycle vocabulary: partition interval, retention, partition facts, lifecycle config.

Pure values with the calendar math callvault needs (all UTC: days at 00:00, weeks on Monday 00:00,
months on the 1st). Naive datetimes are refused (:class:`InvalidSetting`). The planner
(:mod:`callvault.plan`) and the pg_partman rules (:mod:`callvault.partman_rules`) build on these.
"""

from __future__ import annotations

import calendar
import enum
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from callvault.errors import InvalidSetting

_PARTITION_WARN = 8_000
_MIN = datetime.min.replace(tzinfo=UTC)
_MAX = datetime.max.replace(tzinfo=UTC)


def _utc(ts: datetime, what: str) -> datetime:
    """``ts`` in UTC; a naive datetime is refused because its zone would be a guess."""
    if ts.tzinfo is None or ts.utcoffset() is None:
        hint = "give a timezone, e.g. 2026-05-04T00:00:00Z"
        raise InvalidSetting(f"{what} {ts.isoformat()} has no timezone: {hint}")
    return ts.astimezone(UTC)


def _shift_months(ts: datetime, n: int) -> datetime:
    """``ts`` moved by ``n`` calendar months, the day clamped to the target month's last day."""
    year, month0 = divmod(ts.year * 12 + ts.month - 1 + n, 12)
    day = min(ts.day, calendar.monthrange(year, month0 + 1)[1])
    return ts.replace(year=year, month=month0 + 1, day=day)


class Interval(enum.StrEnum):
    """Width of one partition; the value is pg_partman 4.7's ``p_interval``."""

    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"

    @classmethod
    def parse(cls, text: str) -> Interval:
        """The interval ``text`` names, case and spacing ignored: ``daily``/``weekly``/``monthly``,
        pg_partman 5.x's ``1 day``/``1 week``/``1 month``, or the bare unit (``day``, ``week``, ``month``).

        :raises InvalidSetting: any other text (CLI exit code 2).
        """
        key = " ".join(text.lower().split())
        for member in cls:
            if key in (member.value, member.partman_5x(), _UNIT[member]):
                return member
        raise InvalidSetting(f"invalid interval {text!r}: use daily, weekly or monthly")

    def floor(self, ts: datetime) -> datetime:
        """Start of the partition containing ``ts`` (UTC)."""
        day = _utc(ts, "timestamp").replace(hour=0, minute=0, second=0, microsecond=0)
        if self is Interval.WEEKLY:
            return day - timedelta(days=day.weekday())
        if self is Interval.MONTHLY:
            return day.replace(day=1)
        return day

    def add(self, ts: datetime, n: int = 1) -> datetime:
        """The boundary ``n`` intervals after (``n < 0``: before) the boundary ``ts``."""
        start = _utc(ts, "partition boundary")
        if self.floor(start) != start:
            raise InvalidSetting(
                f"{start.isoformat()} is not a {self.value} partition boundary: pass Interval.floor(ts)"
            )
        try:
            if self is Interval.MONTHLY:
                return _shift_months(start, n)
            return start + timedelta(days=n * (7 if self is Interval.WEEKLY else 1))
        except (OverflowError, ValueError):
            moved = f"{start.isoformat()} plus {n} {self.value} intervals"
            raise InvalidSetting(f"{moved} is outside years 1-9999: use a date in range") from None

    def partman_4x(self) -> str:
        """The ``p_interval`` pg_partman 4.x takes: ``daily``, ``weekly`` or ``monthly``."""
        return self.value

    def partman_5x(self) -> str:
        """The ``p_interval`` pg_partman 5.x takes: ``1 day``, ``1 week`` or ``1 month``."""
        return f"1 {_UNIT[self]}"

    def pg_interval(self) -> str:
        """The width as a Postgres interval literal (``1 day``, ``1 week``, ``1 month``)."""
        return self.partman_5x()

    def suffix(self, start: datetime) -> str:
        """pg_partman 4.x child suffix: ``p2026_05_04``, ``p2026w19`` (ISO year/week), ``p2026_05``."""
        s = _utc(start, "partition start")
        if self is Interval.WEEKLY:
            iso = s.isocalendar()
            return f"p{iso.year:04d}w{iso.week:02d}"
        if self is Interval.MONTHLY:
            return f"p{s.year:04d}_{s.month:02d}"
        return f"p{s.year:04d}_{s.month:02d}_{s.day:02d}"

    def from_suffix(self, suffix: str) -> datetime | None:
        """The partition start a :meth:`suffix` names, or None when ``suffix`` is not one."""
        m = _SUFFIX[self].fullmatch(suffix)
        if m is None:
            return None
        try:
            a, b, c = (int(g) if g else 1 for g in (m.group(1), m.group(2), m.groupdict().get("d")))
            if self is Interval.WEEKLY:
                d = date.fromisocalendar(a, b, 1)
                return datetime(d.year, d.month, d.day, tzinfo=UTC)
            return datetime(a, b, c, tzinfo=UTC)
        except ValueError:
            return None


_SUFFIX = {
    Interval.DAILY: re.compile(r"p(\d{4})_(\d{2})_(?P<d>\d{2})"),
    Interval.WEEKLY: re.compile(r"p(\d{4})w(\d{2})"),
    Interval.MONTHLY: re.compile(r"p(\d{4})_(\d{2})"),
}
_UNIT = {Interval.DAILY: "day", Interval.WEEKLY: "week", Interval.MONTHLY: "month"}

# unit -> (months, days) per unit
_RETENTION_UNITS: dict[str, tuple[int, int]] = {
    **dict.fromkeys(("d", "day", "days"), (0, 1)),
    **dict.fromkeys(("w", "wk", "wks", "week", "weeks"), (0, 7)),
    **dict.fromkeys(("mon", "mons", "month", "months"), (1, 0)),
    **dict.fromkeys(("y", "yr", "yrs", "year", "years"), (12, 0)),
}
_RETENTION_TERM = re.compile(r"([0-9]+)\s*([a-z]+)")
_RETENTION_EXAMPLES = "use e.g. '90 days', '12 weeks', '3 months', '1 year' or '1 year 6 months'"


def _plural(n: int, unit: str) -> str:
    return f"{n} {unit}" if n == 1 else f"{n} {unit}s"


@dataclass(frozen=True)
class Retention:
    """How long rows are kept: ``months`` calendar months plus ``days`` days."""

    months: int
    days: int

    def __post_init__(self) -> None:
        if self.months < 0 or self.days < 0 or self.months + self.days == 0:
            raise InvalidSetting(
                f"invalid retention of {self.months} months {self.days} days: both parts must be >= 0 "
                f"and the total > 0; {_RETENTION_EXAMPLES}"
            )
        if self.months > 12_000 or self.days > 366_000:
            raise InvalidSetting(f"retention {self} is over 1000 years: shorten it, or use none")

    @classmethod
    def parse(cls, text: str) -> Retention:
        """The retention ``text`` names: a sum of ``<n> <unit>`` terms, units ``d``/``day(s)``,
        ``w``/``wk(s)``/``week(s)``, ``mon(s)``/``month(s)``, ``y``/``yr(s)``/``year(s)`` (commas
        allowed), e.g. ``Retention.parse("1 year 6 months") == Retention(months=18, days=0)``. Keeping
        data forever is ``None`` for the caller to choose (:func:`callvault.config.lifecycle_from` maps
        ``none`` to it).

        :raises InvalidSetting: an unknown unit, leftover text, a total of zero or over 1000 years.
        """
        body = " ".join(text.lower().replace(",", " ").split())
        terms = _RETENTION_TERM.findall(body)
        leftover = _RETENTION_TERM.sub("", body).strip()
        if not terms or leftover or any(unit not in _RETENTION_UNITS for _, unit in terms):
            raise InvalidSetting(f"invalid retention {text!r}: {_RETENTION_EXAMPLES}")
        months = sum(int(n) * _RETENTION_UNITS[unit][0] for n, unit in terms)
        days = sum(int(n) * _RETENTION_UNITS[unit][1] for n, unit in terms)
        if months + days == 0:
            raise InvalidSetting(
                f"retention {text!r} must be longer than zero: {_RETENTION_EXAMPLES}, or none to keep forever"
            )
        return cls(months=months, days=days)

    def to_pg(self) -> str:
        """Postgres interval literal, e.g. ``90 days``, ``18 mons``, ``3 mons 10 days``."""
        parts = [f"{self.months} mons"] if self.months else []
        return " ".join([*parts, f"{self.days} days"] if self.days else parts)

    def cutoff(self, now: datetime) -> datetime:
        """``now - retention`` in UTC, as Postgres computes ``timestamptz - interval``."""
        at = _utc(now, "now")
        try:
            return _shift_months(at, -self.months) - timedelta(days=self.days)
        except (OverflowError, ValueError):
            return _MIN  # before year 1: nothing can be older than that

    def __str__(self) -> str:
        years, months = divmod(self.months, 12)
        counts = ((years, "year"), (months, "month"), (self.days, "day"))
        return " ".join(_plural(n, unit) for n, unit in counts if n)


@dataclass(frozen=True)
class PartitionInfo:
    """An attached partition as the catalog reports it."""

    name: str
    start: datetime | None  # None for a DEFAULT partition
    end: datetime | None
    is_default: bool = False
    rows_estimate: int | None = None


@dataclass(frozen=True)
class LifecycleConfig:
    """Partition width, how many future partitions to keep ready, how long to keep data."""

    interval: Interval = Interval.WEEKLY
    premake: int = 4
    retention: Retention | None = Retention(0, 90)  # None = keep forever

    def __post_init__(self) -> None:
        if isinstance(self.premake, bool) or not 1 <= self.premake <= 1000:
            raise InvalidSetting(
                f"invalid premake {self.premake!r}: use a number of future partitions from 1 to 1000 (e.g. 4)"
            )
