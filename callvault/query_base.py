"""What every tenant read shares, pure or nearly: the value types a read returns (:class:`Page`,
:class:`CallSummary`, :class:`CallRecord`, :class:`DayStat`), the one window check, limits and keyset
cursors, and the statements (always pinned to a tenant and the partition key). :mod:`callvault.query`
runs them (``Reader``/``AsyncReader``)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

from psycopg import sql

from callvault import columns
from callvault.config import DEFAULT_RETENTION, Settings
from callvault.db import Conn
from callvault.errors import InvalidSetting
from callvault.tenancy.ids import tenant_value, uuid_text

if TYPE_CHECKING:  # the archive tier loads only when a read reaches it
    pass


DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000  # a page bigger than this is an export, not a query: use the archive tools
SUMMARY_COLUMNS = ("id", "call_id", "started_at", "ended_at", "duration_sec")
HOT, ARCHIVE = "hot", "archive"  # the tiers a row can come from: Postgres, or the archive store
_US = timedelta(microseconds=1)


class WindowRefused(InvalidSetting):
    """A read without a bounded, reasonable time window (it would scan every partition)."""


@dataclass(frozen=True)
class CallSummary:
    """One call in a :class:`Page`: no transcript or metadata (use :meth:`Reader.get_call` for those).

    ``id`` is the row's server-assigned id (archived rows keep theirs); ``call_id`` the producer's id;
    times are UTC. ``tier``: where the row was read, ``"hot"`` (Postgres) or ``"archive"`` (the store)."""

    id: int
    call_id: UUID
    started_at: datetime
    ended_at: datetime | None
    duration_sec: int | None
    tier: str = HOT


@dataclass(frozen=True)
class CallRecord:
    """One whole call, as :meth:`Reader.get_call` returns it (times UTC, metadata decoded from jsonb);
    ``tier``: ``"hot"`` (Postgres) or ``"archive"`` (the store)."""

    id: int
    tenant_id: UUID
    call_id: UUID
    started_at: datetime
    ended_at: datetime | None
    duration_sec: int | None
    transcript: str | None
    metadata: dict[str, Any] | None
    tier: str = HOT


@dataclass(frozen=True)
class Page:
    """One page of a tenant's calls, newest first. Iterable and sized like the list it holds::

        page = reader.recent_calls(tenant_id, since=week_ago)
        for call in page:                # CallSummary, newest first
            ...
        if page.next_cursor:             # more (older) rows: ask again with cursor=
            older = reader.recent_calls(tenant_id, since=week_ago, cursor=page.next_cursor)

    ``calls``: the rows; ``next_cursor``: an opaque string to pass back as ``cursor=`` for the next,
    older page (``None`` when this page is the last). A page may hold rows of both tiers: each
    :class:`CallSummary` has its ``tier`` and :attr:`tiers` sums them up. ``pruned``: first days of the
    archived periods this page reached whose objects for the tenant were deleted by archive retention
    (their calls are gone: the page is complete for what still exists); always ``()`` without a store."""

    calls: list[CallSummary]
    next_cursor: str | None
    pruned: tuple[date, ...] = ()

    @property
    def tiers(self) -> tuple[str, ...]:
        """The tiers that served this page's rows, in page order: ``()`` for an empty page, else e.g.
        ``("hot",)``, ``("archive",)`` or ``("hot", "archive")`` (a page across the boundary)."""
        return tuple(dict.fromkeys(c.tier for c in self.calls))

    def to_dict(self) -> dict[str, object]:
        """``{"calls": [...], "next_cursor", "tiers", "pruned"}`` as JSON-ready values (``callvault calls --json``);
        each call ``{"id", "call_id", "started_at", "ended_at", "duration_sec", "tier"}``, times ISO 8601 UTC."""

        def iso(ts: datetime | None) -> str | None:
            return ts.astimezone(UTC).isoformat() if ts is not None else None

        return {
            "calls": [
                {"id": c.id, "call_id": str(c.call_id), "started_at": iso(c.started_at), "ended_at": iso(c.ended_at),
                 "duration_sec": c.duration_sec, "tier": c.tier}
                for c in self.calls
            ],
            "next_cursor": self.next_cursor, "tiers": list(self.tiers), "pruned": [d.isoformat() for d in self.pruned],
        }  # fmt: skip

    def __iter__(self) -> Iterator[CallSummary]:
        return iter(self.calls)

    def __len__(self) -> int:
        return len(self.calls)

    def __getitem__(self, index: int) -> CallSummary:
        return self.calls[index]


@dataclass(frozen=True)
class DayStat:
    """Calls and total talk time (seconds) of one UTC day, from :meth:`Reader.daily_stats`."""

    day: datetime
    calls: int
    total_duration_sec: int


# -- pure: windows and cursors --------------------------------------------------------------------
def max_window_of(settings: Settings) -> timedelta:
    """The widest read window a Reader accepts by default: the table's hot retention."""
    retention = settings.lifecycle.retention or DEFAULT_RETENTION
    now = datetime.now(UTC)
    return now - retention.cutoff(now)


def check_window(since: datetime | None, until: datetime | None, max_window: timedelta) -> tuple[datetime, datetime]:
    """The window as UTC datetimes, or WindowRefused naming what is wrong and the fix."""
    if since is None:
        raise WindowRefused(
            "an unbounded window would scan every partition: pass since= (and until=), e.g. the last 7 days"
        )
    until = until or datetime.now(UTC)
    for name, ts in (("since", since), ("until", until)):
        if not isinstance(ts, datetime) or ts.tzinfo is None:
            raise WindowRefused(f"{name}={ts!r} must be a timezone-aware datetime, e.g. datetime.now(UTC)")
    since, until = since.astimezone(UTC), until.astimezone(UTC)
    if since >= until:
        raise WindowRefused(f"empty window: since {since.isoformat()} is not before until {until.isoformat()}")
    if until - since > max_window:
        raise WindowRefused(
            f"window {since:%Y-%m-%d}..{until:%Y-%m-%d} ({(until - since).days} days) is wider than "
            f"{max_window.days} days (the hot retention): split it, or query the archive for older calls"
        )
    return since, until


def window_params(
    tenant_id: UUID | str, since: datetime | None, until: datetime | None, max_window: timedelta
) -> dict[str, Any]:
    """Parameters of a windowed read: the tenant as a checked UUID and the window as UTC bounds."""
    lo, hi = check_window(since, until, max_window)
    return {"tenant": tenant_value(tenant_id), "since": lo, "until": hi}


def call_value(call_id: UUID | str) -> str:
    """The call id as canonical UUID text, or InvalidSetting naming the bad value (pure)."""
    return uuid_text(call_id, "call", "str or uuid.UUID")


def check_limit(limit: int) -> int:
    """``limit`` when it is 1..MAX_LIMIT; InvalidSetting otherwise."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidSetting(f"limit={limit} must be between 1 and {MAX_LIMIT}")
    return limit


def encode_cursor(started_at: datetime, row_id: int) -> str:
    """The opaque ``next_cursor`` of a page ending at (started_at, id)."""
    raw = json.dumps([started_at.astimezone(UTC).isoformat(), row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """(started_at, id) of a cursor callvault returned; InvalidSetting for anything else."""
    try:
        ts, row_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(ts), int(row_id)
    except (ValueError, TypeError) as exc:
        raise InvalidSetting(f"cursor {cursor!r} is not one callvault returned; start again without cursor=") from exc


# -- SQL builders (pure) ----------------------------------------------------------------------------
def _table(settings: Settings) -> sql.Identifier:
    return sql.Identifier(settings.schema, settings.table)


def window_sql(settings: Settings, *, after_cursor: bool = False) -> sql.Composed:
    """A tenant's calls in [since, until), newest first: served by the primary key, pruned by the bounds.
    With a cursor, ``started_at <= cursor`` also prunes and ``(started_at, id) < cursor`` continues
    exactly after the last row returned (ties on started_at broken by id)."""
    cols = sql.SQL(", ").join(map(sql.Identifier, SUMMARY_COLUMNS))
    keyset = (
        sql.SQL(" AND started_at <= %(cts)s AND (started_at, id) < (%(cts)s, %(cid)s)") if after_cursor else sql.SQL("")
    )
    return sql.SQL(
        "SELECT {cols} FROM {t} WHERE tenant_id = %(tenant)s AND started_at >= %(since)s AND started_at < %(until)s"
        "{keyset} ORDER BY started_at DESC, id DESC LIMIT %(limit)s"
    ).format(cols=cols, t=_table(settings), keyset=keyset)


def get_call_sql(settings: Settings, *, pinned: bool) -> sql.Composed:
    """One call: with started_at it touches one partition; without, one unique-index probe per
    partition (the (tenant_id, call_id, started_at) key), never a scan."""
    pin = sql.SQL(" AND started_at = %(started_at)s") if pinned else sql.SQL("")
    return sql.SQL("SELECT {cols} FROM {t} WHERE tenant_id = %(tenant)s AND call_id = %(call)s{pin} LIMIT 1").format(
        cols=columns.column_list(), t=_table(settings), pin=pin
    )


# The partitions attached to %(parent)s (a regclass text): one pg_inherits index scan. A key per attach
# (the partition's oid, and the xmin of its pg_inherits row: attaching again makes a new one); pending
# detaches are not attached (queries no longer see them). Catalog only: any role may read it, the
# RLS-bound application role included.
ATTACHED_SQL = sql.SQL(
    "SELECT inhrelid::int8, xmin::text FROM pg_inherits WHERE inhparent = %(parent)s::regclass AND NOT inhdetachpending"
)
# The [from, to) bounds of partitions %(oids)s as timestamptz (NULL for DEFAULT or MINVALUE/MAXVALUE),
# read only for keys not seen before: a partition's bounds cannot change while it stays attached.
BOUNDS_SQL = sql.SQL(
    "SELECT oid::int8, (regexp_match(b, 'FROM \\(''([^'']+)''\\)'))[1]::timestamptz, "
    "(regexp_match(b, 'TO \\(''([^'']+)''\\)'))[1]::timestamptz "
    "FROM (SELECT oid, pg_get_expr(relpartbound, oid) AS b FROM pg_class WHERE oid = ANY(%(oids)s::oid[])) p"
)

Range = tuple[datetime, datetime]
Bounds = tuple[datetime | None, datetime | None]


def attached_ranges(conn: Conn, settings: Settings) -> list[Range]:
    """The ``[from, to)`` ranges of the partitions attached to the settings' table, oldest first
    (two catalog statements; no rows read)."""
    parent = sql.Identifier(settings.schema, settings.table).as_string()
    keys = conn.execute(ATTACHED_SQL, {"parent": parent}, prepare=False).fetchall()
    rows = conn.execute(BOUNDS_SQL, {"oids": [oid for oid, _ in keys]}, prepare=False).fetchall()
    return sorted((lo, hi) for _, lo, hi in rows if lo is not None and hi is not None)


def count_sql(settings: Settings) -> sql.Composed:
    """A tenant's calls in [since, until), counted (pruned by the bounds)."""
    return sql.SQL(
        "SELECT count(*) FROM {t} WHERE tenant_id = %(tenant)s AND started_at >= %(since)s AND started_at < %(until)s"
    ).format(t=_table(settings))


def daily_sql(settings: Settings) -> sql.Composed:
    """Per-day calls and talk time. date_trunc is only in the output, never on the filtered key."""
    return sql.SQL(
        "SELECT date_trunc('day', started_at) AS day, count(*), coalesce(sum(duration_sec), 0)::bigint FROM {t} "
        "WHERE tenant_id = %(tenant)s AND started_at >= %(since)s AND started_at < %(until)s "
        "GROUP BY 1 ORDER BY 1"
    ).format(t=_table(settings))


# -- one plan per read, run by two thin twins ------------------------------------------------------
