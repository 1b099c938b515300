"""Quarantine reasons as a few stable codes, for metric labels and alerts.

A quarantine reason is a sentence naming the value and the fix (``started_at 2026-... is beyond the
premake horizon (...): run `callvault maintain`...``): right for a person, wrong for a metric label,
where every distinct text would be its own time series. :func:`code` maps a reason to one of
:data:`CODES`; :func:`sql_case` is the same mapping as SQL, so the writer's counters and the
quarantine table's counts (``callvault metrics``) agree. The patterns are plain POSIX regular
expressions that Python's ``re`` and PostgreSQL's ``~`` read the same way.
"""

from __future__ import annotations

import re

from psycopg import sql

# (code, pattern): the first match wins; a reason no pattern matches is "invalid".
RULES: tuple[tuple[str, str], ...] = (
    ("no_partition", r"^started_at [^ ]+ (cannot be stored, the table has no partitions|is beyond the premake horizon"
                     r"|falls in a gap between partitions)"),
    ("no_partition", r"no partition of relation"),
    ("too_old", r"^started_at [^ ]+ is before the oldest partition"),
    ("unknown_field", r"^unknown field"),
    ("missing_field", r"^missing required field"),
    ("bad_id", r"^[a-z_]+ .* is not a UUID|^[a-z_]+ must be a UUID"),
    ("bad_timestamp", r"^(started_at|ended_at) "),
    ("bad_duration", r"^duration_sec "),
    ("bad_transcript", r"^transcript "),
    ("bad_metadata", r"^metadata "),
    ("not_a_call", r"^expected a callvault Call"),
    ("refused_by_database", r"^refused by the database"),
)  # fmt: skip
OTHER = "invalid"
CODES: tuple[str, ...] = (*dict.fromkeys(c for c, _ in RULES), OTHER)

_COMPILED = tuple((c, re.compile(p)) for c, p in RULES)


def code(reason: str) -> str:
    """The code of a quarantine reason (one of :data:`CODES`). Pure.

    >>> code("started_at 2030-01-01T00:00:00+00:00 is beyond the premake horizon (...): run ...")
    'no_partition'
    """
    for c, pattern in _COMPILED:
        if pattern.search(reason):
            return c
    return OTHER


def sql_case(column: sql.Composable) -> sql.Composed:
    """``CASE WHEN column ~ pattern THEN code ... ELSE 'invalid' END``: :func:`code` in SQL."""
    whens = [sql.SQL("WHEN {} ~ {} THEN {}").format(column, sql.Literal(p), sql.Literal(c)) for c, p in RULES]
    return sql.SQL("CASE {} ELSE {} END").format(sql.SQL(" ").join(whens), sql.Literal(OTHER))
