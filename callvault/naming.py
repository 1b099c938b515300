"""Partition names: ``<table>_p<suffix>``, the suffix being the partition's start formatted with
pg_partman's ``datetime_string`` (pure: no I/O).

pg_partman stores the pattern per table in ``part_config.datetime_string`` and formats it with
Postgres' ``to_char``. The patterns in use:

* 4.x: ``YYYY_MM_DD`` (daily, and any custom interval of a day or more: callvault's weekly tables
  made since 4.7 support of 5.x), ``YYYY_MM`` (monthly), ``IYYY"w"IW`` (4.x's named ``weekly``: ISO
  weeks, ``p2026w37``; **refused by pg_partman 5.x**, see :data:`UNSUPPORTED_IN_5`), ``YYYY"q"Q``.
* 5.x: ``YYYYMMDD`` for every interval of a day or more (``p20260907``).

A table keeps the pattern it was made with (an upgrade does not rename), and a table migrated from ISO
weeks (``callvault partman migrate``) changes pattern while detached leftovers keep their old names: so
a name is read with the table's pattern first, then with every other known pattern.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

from callvault.lifecycle import Interval

ISO_WEEKLY = 'IYYY"w"IW'
QUARTERLY = 'YYYY"q"Q'
UNSUPPORTED_IN_5 = (ISO_WEEKLY, QUARTERLY)  # pg_partman 5.x's run_maintenance() raises on these
PARTMAN5 = "YYYYMMDD"
KNOWN = (PARTMAN5, "YYYY_MM_DD", "YYYY_MM", ISO_WEEKLY)

# to_char tokens pg_partman's patterns use: token -> (regex group, format of the value)
_TOKENS = {
    "YYYY": r"(?P<Y>\d{4})",
    "IYYY": r"(?P<IY>\d{4})",
    "MM": r"(?P<M>\d{2})",
    "DD": r"(?P<D>\d{2})",
    "IW": r"(?P<IW>\d{2})",
    "HH24": r"(?P<H>\d{2})",
    "MI": r"(?P<MI>\d{2})",
    "SS": r"(?P<S>\d{2})",
}
_TOKEN = re.compile(r'"([^"]*)"|(YYYY|IYYY|HH24|MM|DD|IW|MI|SS)|(.)', re.S)


def _parts(pattern: str) -> list[tuple[str, str]]:
    """(kind, text): kind 'lit' (literal text) or 'tok' (a to_char token)."""
    out = []
    for m in _TOKEN.finditer(pattern):
        quoted, token, other = m.groups()
        if token is not None:
            out.append(("tok", token))
        else:
            out.append(("lit", quoted if quoted is not None else other))
    return out


def default_pattern(interval: Interval, major: int) -> str:
    """The ``datetime_string`` pg_partman gives a table callvault creates now (``p_interval`` as
    :func:`callvault.partman.create_parent_sql` passes it)."""
    if major >= 5:
        return PARTMAN5
    return "YYYY_MM" if interval is Interval.MONTHLY else "YYYY_MM_DD"


def suffix(pattern: str, start: datetime) -> str:
    """``to_char(start, pattern)`` for the tokens pg_partman's patterns use (UTC)."""
    s = start.astimezone(UTC)
    iso = s.isocalendar()
    values = {"YYYY": s.year, "IYYY": iso.year, "MM": s.month, "DD": s.day, "IW": iso.week, "HH24": s.hour,
              "MI": s.minute, "SS": s.second}  # fmt: skip
    return "".join(f"{values[text]:0{4 if text in ('YYYY', 'IYYY') else 2}d}" if kind == "tok" else text
                   for kind, text in _parts(pattern))  # fmt: skip


def name(table: str, pattern: str, start: datetime) -> str:
    """The child pg_partman names for the partition starting at ``start``."""
    return f"{table}_p{suffix(pattern, start)}"


def parse_suffix(pattern: str, text: str) -> datetime | None:
    """The instant a suffix written with ``pattern`` names (UTC), or None when it is not one."""
    regex = "".join(_TOKENS[t] if kind == "tok" else re.escape(t) for kind, t in _parts(pattern))
    m = re.fullmatch(regex, text)
    if m is None:
        return None
    g = {k: int(v) for k, v in m.groupdict().items() if v is not None}
    try:
        if "IY" in g and "IW" in g:
            d = date.fromisocalendar(g["IY"], g["IW"], 1)
            return datetime(d.year, d.month, d.day, tzinfo=UTC)
        if "Y" not in g:
            return None
        return datetime(g["Y"], g.get("M", 1), g.get("D", 1), g.get("H", 0), g.get("MI", 0), g.get("S", 0), tzinfo=UTC)
    except ValueError:
        return None


def start_of(partition: str, table: str, interval: Interval, pattern: str | None = None) -> datetime | None:
    """The start of the partition named ``partition`` of ``table``: read with the table's ``pattern``
    first, then every known pattern; only a start on an ``interval`` boundary counts (None otherwise)."""
    prefix = f"{table}_p"
    if not partition.startswith(prefix):
        return None
    text = partition[len(prefix) :]
    for p in (pattern, *KNOWN) if pattern else KNOWN:
        start = parse_suffix(p, text)
        if start is not None and interval.floor(start) == start:
            return start
    return None
