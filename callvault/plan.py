"""Partition lifecycle planner: (config, now, existing partitions) -> what maintenance will do.

Pure logic: no I/O, no database. The plan is what ``callvault maintain`` does at ``now`` — and, for
everything marked ``by = "pg_partman"``, what pg_partman's own ``run_maintenance()`` (pg_cron, the
worker) does, because those rules are pg_partman's, read from its source (:mod:`callvault.partman_rules`).

Rules of :func:`build_plan`:

* ``now`` is converted to UTC; a naive ``now`` (or partition bound) is refused.
* Retention first (as ``run_maintenance`` does): a partition is retired when
  ``start + interval < now - retention`` (strict), oldest first, never the last remaining one.
* Premake (pg_partman): from the *last* partition forward, while
  ``round(epoch(age(last_start, now)) / epoch(interval)) < premake`` (Postgres arithmetic, UTC). So the
  horizon is premake intervals ahead until the middle of the current interval, premake + 1 after.
  A table whose last partition is in the past gets every partition up to that horizon.
* Gaps (callvault): every interval-aligned slot between the oldest partition (or the current
  interval, if earlier) and the newest partition that overlaps no partition and is not itself past
  retention. pg_partman never fills these; a write into
  one fails (the writer quarantines it), so ``callvault maintain`` creates them and ``health`` reports
  them until it has.
* ``default_rows > 0``: warning that rows are stranded in the default partition, that maintenance
  fails to create partitions overlapping them, and how to fix it.
* More than 8000 partitions after the plan (existing + create - retire): warning, because planning
  time degrades past ~10k partitions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from callvault import naming, partman_rules
from callvault.errors import InvalidSetting
from callvault.lifecycle import (
    _MAX,
    _MIN,
    _PARTITION_WARN,
    Interval,
    LifecycleConfig,
    PartitionInfo,
    Retention,
    _utc,
)

__all__ = ["Interval", "LifecycleConfig", "PartitionInfo", "PartitionRange", "Plan", "Retention", "build_plan"]

BY_PARTMAN = "pg_partman"  # premade by run_maintenance() (pg_cron, worker, callvault maintain)
BY_CALLVAULT = "callvault"  # a gap only callvault maintain fills


@dataclass(frozen=True)
class PartitionRange:
    """A partition to create: ``[start, end)`` in UTC, named as the installed pg_partman names it."""

    start: datetime
    end: datetime
    name: str
    by: str = BY_PARTMAN


def partition_name(table: str, interval: Interval, start: datetime, major: int = 4, pattern: str | None = None) -> str:
    """pg_partman's child name: with the table's ``datetime_string`` (``pattern``), that; without it,
    4.x's named intervals ``p2026w19``/``p2026_05_04``/``p2026_05``, 5.x ``p20260504``."""
    if pattern:
        return naming.name(table, pattern, start)
    if major >= 5:
        return f"{table}_p{_utc(start, 'partition start'):%Y%m%d}"
    return f"{table}_{interval.suffix(start)}"


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
        """Nothing to create or retire, and no rows in a default partition."""
        return not self.create and not self.retire and self.default_rows == 0

    @property
    def gaps(self) -> tuple[PartitionRange, ...]:
        """The partitions to create that only ``callvault maintain`` fills (``by == "callvault"``)."""
        return tuple(r for r in self.create if r.by == BY_CALLVAULT)

    def to_dict(self) -> dict[str, object]:
        """The plan as JSON-ready values (``callvault plan --json``); times are ISO 8601, UTC as ``Z``."""
        return {
            "at": _iso(self.at),
            "table": self.table,
            "interval": self.interval.value,
            "create": [{"name": r.name, "from": _iso(r.start), "to": _iso(r.end), "by": r.by} for r in self.create],
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
        """One line per partition to create or retire (or one saying there is nothing to do), then the
        warnings: what ``callvault plan`` prints."""
        lines = [
            f"create {r.name} {_span(r.start, r.end)}" + (" \u2014 fills a gap" if r.by == BY_CALLVAULT else "")
            for r in self.create
        ]
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


def gap_slots(
    interval: Interval, parts: Sequence[_Bounded], cutoff: datetime | None, now: datetime
) -> list[tuple[datetime, datetime]]:
    """Aligned slots between the oldest partition (or the current interval, if earlier) and the
    newest partition that overlap none of them and are not past retention (``slot end < cutoff``),
    oldest first. Pure."""
    ranged = [b for b in parts if b.start != _MIN and b.end != _MAX]
    if not ranged:
        return []
    lo, hi = min(min(b.start for b in ranged), interval.floor(now)), max(b.end for b in ranged)
    out = []
    slot = interval.floor(lo)
    while slot < hi:
        end = interval.add(slot)
        past = cutoff is not None and end < cutoff
        if not past and not any(b.start < end and slot < b.end for b in parts):
            out.append((slot, end))
        slot = end
    return out


def build_plan(
    config: LifecycleConfig,
    now: datetime,
    existing: Sequence[PartitionInfo],
    *,
    table: str = "call_logs",
    default_rows: int = 0,
    partman_major: int = 4,
    newest_row: datetime | None = None,
    default_newest: datetime | None = None,
    datetime_string: str | None = None,
) -> Plan:
    """The plan for ``table`` at ``now``; see the module docstring for the rules.

    ``partman_major``: the installed pg_partman's major version (its rules differ); ``newest_row``:
    ``max(started_at)`` of the attached partitions (5.x counts premake from it when it is in the
    future); ``default_newest``: the newest row in a default partition, if any; ``datetime_string``: the
    table's naming pattern (``part_config.datetime_string``; default the named intervals' of
    ``partman_major``).
    """
    at = _utc(now, "now")
    if default_rows < 0:
        raise InvalidSetting(f"invalid default_rows {default_rows}: a row count is 0 or more")
    interval = config.interval
    parts = _bounded(existing)
    warnings = _shape_warnings(interval, parts)
    kids = partman_rules.children(interval, existing, partman_major, datetime_string)
    gone = partman_rules.retired(interval, config.retention, kids, at)
    premade = partman_rules.premake_starts(
        interval, config.premake, kids, at, major=partman_major, newest_row=newest_row, default_newest=default_newest
    )
    cutoff = config.retention.cutoff(at) if config.retention is not None else None
    # pg_partman adds the interval to the last partition's start; create_partition_time() then makes the
    # aligned partition holding that instant. Off-grid partitions (warned above) can make the two differ.
    slots = sorted({interval.floor(s) for s in premade})
    create = [
        PartitionRange(s, interval.add(s), partition_name(table, interval, s, partman_major, datetime_string))
        for s in slots
        if not any(b.start < interval.add(s) and s < b.end for b in parts)
    ]
    gone_names = {k.info.name for k in gone}
    after = [b for b in parts if b.info.name not in gone_names]
    after += [_Bounded(PartitionInfo(r.name, r.start, r.end), r.start, r.end) for r in create]
    create += [
        PartitionRange(s, e, partition_name(table, interval, s, partman_major, datetime_string), by=BY_CALLVAULT)
        for s, e in gap_slots(interval, after, cutoff, at)
    ]
    create.sort(key=lambda r: r.start)
    if not kids:
        warnings.append(
            f"{table} has no ranged partitions: pg_partman cannot premake from nothing; run `callvault init`"
        )
    if default_rows > 0:
        warnings.append(
            f"default partition holds {default_rows} rows: they are stranded outside any ranged partition, "
            "and maintenance fails to create partitions overlapping them; move them out (callvault "
            "quarantine, or by hand) or create their partitions with partman.partition_data_proc"
        )
    count = len(existing) + len(create) - len(gone)
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
        retire=tuple(k.info for k in gone),
        horizon_before=max(ends, default=None),
        horizon_after=max([*ends, *(r.end for r in create)], default=interval.add(interval.floor(at))),
        cutoff=cutoff,
        default_rows=default_rows,
        warnings=tuple(warnings),
    )
