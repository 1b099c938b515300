"""What pg_partman's maintenance will do at an instant, as pure functions of (config, now, partitions).

These rules are *read from pg_partman's source*, not designed: callvault's planner must say exactly
what ``run_maintenance()`` then does, at every instant. Line numbers refer to the files in the
pg_partman repository (``sql/functions/*.sql``) at tags v4.7.2 and v5.1.0; the installed 4.7.2 script
(``/usr/share/postgresql/15/extension/pg_partman--4.7.2.sql``) holds the same code.

Premake (``run_maintenance.sql``):

* The *last* partition is the first row of ``show_partitions(parent, 'DESC')`` (v4.7.2 line 193 /
  v5.1.0 line 196). 4.7 orders children by the timestamp in their name suffix
  (``show_partitions.sql`` v4.7.2 line 88), 5.x by their bounds; its start is the lower bound
  (``show_partition_info``).
* "current" (v4.7.2 lines 211-214): with ``infinite_time_partitions`` it is ``CURRENT_TIMESTAMP``.
  5.1 (lines 218-243) scans children newest first for ``max(control)``: the first non-empty child
  decides; if that max is before now, "current" is now, otherwise the start of the partition
  holding it (``show_partition_name(...).suffix_timestamp``); all empty: now.
* Both versions then (v4.7.2 lines 234-241 / v5.1.0 lines 246-264): rows in the default partition
  newer than "current" move "current" to the start of their partition.
* Count and loop (v4.7.2 lines 260-296 / v5.1.0 lines 280-314):
  ``premade = round(EXTRACT('epoch' FROM age(last_start, current)) / EXTRACT('epoch' FROM interval))``;
  while ``premade < premake``: ``next := next + interval``, create it, recount from ``next``.
  Because ``current`` is *now*, not the start of the current partition, from the middle of an interval
  on (Thursday 12:00 UTC for weekly) it keeps premake + 1 partitions ahead. The arithmetic is
  Postgres' own (:mod:`callvault.pgtime`).

Retention (``drop_partition_time.sql``, v4.7.2 lines 182-194 / v5.1.0 lines 150-166): children in
``show_partitions(parent, 'ASC')`` order; one is retired when ``start + interval < now - retention``
(strict), except that the final remaining child is never dropped. Retention runs *before* premake,
and "last" is read before retention runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from callvault import naming, pgtime
from callvault.lifecycle import Interval, PartitionInfo, Retention
from callvault.pgtime import PgInterval

PREMAKE_LIMIT = 100_000  # a guard against a runaway loop (years of a daily table left unmaintained)


def pg_interval(interval: Interval) -> PgInterval:
    """``partition_interval::interval`` as pg_partman stores it ('1 day', '7 days', '1 mon')."""
    if interval is Interval.MONTHLY:
        return PgInterval(months=1)
    return PgInterval(days=7 if interval is Interval.WEEKLY else 1)


@dataclass(frozen=True)
class Child:
    """A ranged (non-default) partition as pg_partman sees it."""

    info: PartitionInfo
    start: datetime  # lower bound
    order: datetime  # the sort key of show_partitions()


def children(
    interval: Interval, existing: Sequence[PartitionInfo], major: int, pattern: str | None = None
) -> list[Child]:
    """Non-default partitions with a lower bound, in ``show_partitions(parent, 'ASC')`` order (4.x: by
    the name's suffix read with the table's ``datetime_string``, ``pattern``)."""
    out = []
    for p in existing:
        if p.is_default or p.start is None:
            continue
        order = p.start
        if major < 5:  # 4.7 sorts by the name's suffix (to_timestamp(suffix, datetime_string))
            suffix = p.name.rsplit("_p", 1)[-1] if "_p" in p.name else ""
            parsed = naming.parse_suffix(pattern, suffix) if pattern else interval.from_suffix(f"p{suffix}")
            order = parsed or p.start
        out.append(Child(p, p.start, order))
    return sorted(out, key=lambda c: (c.order, c.start))


def current_timestamp(
    interval: Interval, now: datetime, major: int, newest_row: datetime | None, default_newest: datetime | None
) -> datetime:
    """pg_partman's ``v_current_partition_timestamp`` with ``infinite_time_partitions = true``."""
    current = now
    if major >= 5 and newest_row is not None and newest_row >= now:
        current = interval.floor(newest_row)
    if default_newest is not None and default_newest > current:
        current = interval.floor(default_newest)
    return current


def premake_starts(
    interval: Interval,
    premake: int,
    kids: Sequence[Child],
    now: datetime,
    *,
    major: int = 4,
    newest_row: datetime | None = None,
    default_newest: datetime | None = None,
) -> list[datetime]:
    """Starts of the partitions ``run_maintenance()`` creates at ``now`` (premake loop)."""
    if not kids:
        return []
    step = pg_interval(interval)
    last = kids[-1].start
    current = current_timestamp(interval, now, major, newest_row, default_newest)
    premade = pgtime.intervals_between(last, current, step)
    out: list[datetime] = []
    nxt = last
    while premade < premake and len(out) < PREMAKE_LIMIT:
        try:
            nxt = pgtime.add(nxt, step)
        except (OverflowError, ValueError):
            break  # pg_partman: datetime_field_overflow -> warning, stop premaking
        out.append(nxt)
        premade = pgtime.intervals_between(nxt, current, step)
    return out


def retired(interval: Interval, retention: Retention | None, kids: Sequence[Child], now: datetime) -> list[Child]:
    """Children ``drop_partition_time()`` detaches at ``now`` (never the final one)."""
    if retention is None:
        return []
    step = pg_interval(interval)
    try:
        cutoff = pgtime.add(now, PgInterval(months=-retention.months, days=-retention.days))
    except (OverflowError, ValueError):
        return []
    out: list[Child] = []
    remaining = len(kids)
    for kid in kids:
        try:
            end = pgtime.add(kid.start, step)
        except (OverflowError, ValueError):
            continue
        if end < cutoff and remaining > 1:
            out.append(kid)
            remaining -= 1
    return out
