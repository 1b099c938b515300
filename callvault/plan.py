"""Partition lifecycle planner: (config, now, existing partitions) -> what maintenance and retention do.

Pure logic: no I/O, no database. All calendar math is done in UTC: aware datetimes are converted to
UTC first, naive ones are refused (:class:`InvalidSetting`). Days start at 00:00 UTC, weeks on Monday
00:00 UTC, months on the 1st 00:00 UTC, whatever zone the caller lives in.

Rules of :func:`build_plan`:

* ``now`` is converted to UTC; a naive ``now`` (or partition bound) is refused.
* Live range: ``[floor(now), horizon)`` with ``horizon = add(floor(now), premake + 1)``, i.e. the current
  partition plus ``premake`` future ones. Every interval-aligned slot in that range that overlaps no
  existing non-default partition goes into ``create`` (gaps inside the range are filled). Existing
  partitions may have gaps or odd bounds: a slot overlapping any of them is not created, and each
  partition whose bounds are off the interval grid gets a warning. A non-default partition with an
  unknown bound (``None``: MINVALUE/MAXVALUE) counts as unbounded on that side.
* Past gaps stay: slots between the newest existing partition and ``floor(now)`` are never created
  (pg_partman does not backfill either).
* Retention: ``cutoff = now - retention`` (months first, day clamped, then days, as Postgres does). A
  non-default partition is retired when ``end < cutoff`` (strict, like pg_partman 4.7's
  ``start + interval < now - retention``). The default partition is never retired, nor a partition
  whose end is after ``now`` (that is warned about instead).
* ``default_rows > 0``: warning that rows are stranded in the default partition, that maintenance
  fails to create partitions overlapping them, and how to fix it.
* More than 8000 partitions after the plan (existing + create - retire): warning, because planning
  time degrades past ~10k partitions.
"""

from __future__ import annotations

import calendar
import enum
import re
from collections.abc import Sequence
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
        return self.value

    def partman_5x(self) -> str:
        return f"1 {_UNIT[self]}"

    def pg_interval(self) -> str:
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


@dataclass(frozen=True)
class PartitionRange:
    """A partition to create: ``[start, end)`` in UTC, named like pg_partman 4.x names it."""

    start: datetime
    end: datetime
    name: str


def _iso(ts: datetime | None) -> str | None:
    if ts is None:
        return None
    text = ts.astimezone(UTC).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _day(ts: datetime | None, missing: str) -> str:
    if ts is None:
        return missing
    u = ts.astimezone(UTC)
    return u.date().isoformat() if u.time() == datetime.min.time() else f"{u.date()} {u.time()}Z"


def _span(start: datetime | None, end: datetime | None) -> str:
    return f"[{_day(start, 'MINVALUE')} .. {_day(end, 'MAXVALUE')})"


@dataclass(frozen=True)
class Plan:
    """What maintenance and retention will do for one table at one moment."""

    at: datetime
    table: str
    interval: Interval
    create: tuple[PartitionRange, ...]
    retire: tuple[PartitionInfo, ...]
    horizon_before: datetime | None
    horizon_after: datetime
    cutoff: datetime | None
    default_rows: int
    warnings: tuple[str, ...]

    @property
    def is_empty(self) -> bool:
        return not self.create and not self.retire and self.default_rows == 0

    def to_dict(self) -> dict[str, object]:
        return {
            "at": _iso(self.at),
            "table": self.table,
            "interval": self.interval.value,
            "create": [{"name": r.name, "from": _iso(r.start), "to": _iso(r.end)} for r in self.create],
            "retire": [
                {"name": p.name, "from": _iso(p.start), "to": _iso(p.end), "rows_estimate": p.rows_estimate}
                for p in self.retire
            ],
            "horizon_before": _iso(self.horizon_before),
            "horizon_after": _iso(self.horizon_after),
            "cutoff": _iso(self.cutoff),
            "default_rows": self.default_rows,
            "warnings": list(self.warnings),
            "is_empty": self.is_empty,
        }

    def describe(self) -> list[str]:
        lines = [f"create {r.name} {_span(r.start, r.end)}" for r in self.create]
        why = f"\u2014 past retention (cutoff {_day(self.cutoff, 'none')})"
        lines += [f"retire {p.name} {_span(p.start, p.end)} {why}" for p in self.retire]
        if not lines:
            lines.append(f"nothing to create or retire: partitions reach {_day(self.horizon_after, '')}")
        return lines + list(self.warnings)


@dataclass(frozen=True)
class _Bounded:
    """A non-default partition with UTC bounds; unknown bounds become the far past / far future."""

    info: PartitionInfo
    start: datetime
    end: datetime


def _bounded(existing: Sequence[PartitionInfo]) -> list[_Bounded]:
    out = []
    for p in existing:
        if not p.is_default:
            start = _MIN if p.start is None else _utc(p.start, f"start of partition {p.name}")
            end = _MAX if p.end is None else _utc(p.end, f"end of partition {p.name}")
            out.append(_Bounded(p, start, end))
    return sorted(out, key=lambda b: (b.start, b.end))


def _shape_warnings(interval: Interval, parts: list[_Bounded]) -> list[str]:
    out = []
    for b in parts:
        name, span = b.info.name, _span(b.info.start, b.info.end)
        if b.info.start is None or b.info.end is None:
            out.append(f"partition {name} {span} is open-ended: treated as unbounded; replace it with ranges")
        elif interval.floor(b.start) != b.start or interval.floor(b.end) != b.end:
            out.append(
                f"partition {name} {span} is not aligned to {interval.value} boundaries: nothing is created "
                f"over it; recreate it on {interval.value} bounds or use the interval it was made with"
            )
    return out


def _missing(
    interval: Interval, start: datetime, horizon: datetime, parts: list[_Bounded], table: str
) -> list[PartitionRange]:
    """Aligned slots of ``[start, horizon)`` that overlap no existing partition."""
    near = [b for b in parts if b.start < horizon and start < b.end]
    create = []
    while start < horizon:
        end = interval.add(start)
        if not any(b.start < end and start < b.end for b in near):
            create.append(PartitionRange(start=start, end=end, name=f"{table}_{interval.suffix(start)}"))
        start = end
    return create


def _past_retention(
    parts: list[_Bounded], cutoff: datetime | None, at: datetime
) -> tuple[list[PartitionInfo], list[str]]:
    retire, warnings = [], []
    for b in parts:
        if cutoff is None or b.info.end is None or not b.end < cutoff:
            continue
        if b.end > at:
            warnings.append(f"partition {b.info.name} ends after now: not retired; lengthen the retention")
        else:
            retire.append(b.info)
    return retire, warnings


def build_plan(
    config: LifecycleConfig,
    now: datetime,
    existing: Sequence[PartitionInfo],
    *,
    table: str = "call_logs",
    default_rows: int = 0,
) -> Plan:
    """The plan for ``table`` at ``now``; see the module docstring for the rules."""
    at = _utc(now, "now")
    if default_rows < 0:
        raise InvalidSetting(f"invalid default_rows {default_rows}: a row count is 0 or more")
    interval = config.interval
    parts = _bounded(existing)
    warnings = _shape_warnings(interval, parts)
    live = interval.floor(at)
    horizon = interval.add(live, config.premake + 1)
    create = _missing(interval, live, horizon, parts, table)
    cutoff = config.retention.cutoff(at) if config.retention is not None else None
    retire, retire_warnings = _past_retention(parts, cutoff, at)
    warnings += retire_warnings
    if default_rows > 0:
        warnings.append(
            f"default partition holds {default_rows} rows: they are stranded outside any ranged partition, "
            "and maintenance fails to create partitions overlapping them; move them out (callvault "
            "quarantine, or by hand) or create their partitions with partman.partition_data_proc"
        )
    count = len(existing) + len(create) - len(retire)
    if count > _PARTITION_WARN:
        warnings.append(
            f"{count} partitions after this plan: query planning slows down past ~10k partitions; "
            "use a longer interval or a shorter retention"
        )
    ends = [b.end for b in parts if b.info.end is not None]
    return Plan(
        at=at,
        table=table,
        interval=interval,
        create=tuple(create),
        retire=tuple(retire),
        horizon_before=max(ends, default=None),
        horizon_after=max([*ends, *(r.end for r in create)], default=horizon),
        cutoff=cutoff,
        default_rows=default_rows,
        warnings=tuple(warnings),
    )
