"""What every tenant read shares, pure or nearly: the value types a read returns (:class:`Page`,
:class:`CallSummary`, :class:`CallRecord`, :class:`DayStat`), the one window check, limits and keyset
cursors, the statements (always pinned to a tenant and the partition key), and the plan of each read,
decided once (:class:`Read`: which tenant, which statement with which bounds, how rows become the
answer, what the archive tier may add). :class:`~callvault.query.AsyncReader` and its generated twin
:class:`~callvault.query.Reader` only run the plans."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

from psycopg import sql

from callvault import columns
from callvault.config import DEFAULT_RETENTION, Settings, from_env
from callvault.db import Conn
from callvault.errors import InvalidSetting
from callvault.tenancy.ids import tenant_value, uuid_text
from callvault.window import WindowRefused as WindowRefused
from callvault.window import check_window as check_window

if TYPE_CHECKING:  # the archive tier loads only when a read reaches it
    from callvault.archive.store import Store
    from callvault.search import Match


DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000  # a page bigger than this is an export, not a query: use the archive tools
SUMMARY_COLUMNS = ("id", "call_id", "started_at", "ended_at", "duration_sec")
HOT, ARCHIVE = "hot", "archive"  # the tiers a row can come from: Postgres, or the archive store
_US = timedelta(microseconds=1)
_OWN = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


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
    extra: dict[str, Any] = field(default_factory=dict)  # the table's own columns asked with columns=
    snippet: str | None = None  # a search hit: the match in its context, marked « » (Reader.search only)


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
    extra: dict[str, Any] = field(default_factory=dict)  # the table's own columns (JSON values), by name


def record_of(row: Any, tier: str = HOT) -> CallRecord:
    """A :class:`CallRecord` from a lookup's row: the seed's eight columns, then the extras as a JSON object."""
    extra = row[8] if len(row) > 8 else None
    if isinstance(extra, str):
        extra = json.loads(extra)
    rid, tenant, call, started, ended, duration, transcript, metadata = row[:8]
    return CallRecord(rid, tenant, call, started, ended, duration, transcript, metadata, tier, dict(extra or {}))


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
                 "duration_sec": c.duration_sec, "tier": c.tier,
                 **({"snippet": c.snippet} if c.snippet is not None else {})}
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


@dataclass(frozen=True)
class UsageRow:
    """One row of :meth:`Reader.usage`: calls and talk seconds of the tenant in one ``period`` (the UTC
    hour or day it starts, with ``by="hour"``/``"day"``), or for one ``dimension`` value over the whole
    window (``by=<the dimension's key>``; ``None``: calls without that key)."""

    period: datetime | None
    dimension: str | None
    calls: int
    seconds: int

    def to_dict(self) -> dict[str, object]:
        """``{"period", "dimension", "calls", "seconds"}`` (period ISO 8601 UTC, or None by dimension)."""
        return {"period": self.period.astimezone(UTC).isoformat() if self.period else None,
                "dimension": self.dimension, "calls": self.calls, "seconds": self.seconds}  # fmt: skip


USAGE_MAX_HOURS = timedelta(days=93)  # by="hour": at most this wide (2,232 rows)
USAGE_MAX_WINDOW = timedelta(days=3700)  # by day or dimension: ten years


# -- pure: windows and cursors --------------------------------------------------------------------
def max_window_of(settings: Settings) -> timedelta:
    """The widest read window a Reader accepts by default: the table's hot retention."""
    retention = settings.lifecycle.retention or DEFAULT_RETENTION
    now = datetime.now(UTC)
    return now - retention.cutoff(now)


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


def window_sql(
    settings: Settings, *, after_cursor: bool = False, where: tuple[str, ...] = (), columns: tuple[str, ...] = (),
    match: Match | None = None,
) -> sql.Composed:  # fmt: skip
    """A tenant's calls in [since, until), newest first: served by the primary key, pruned by the bounds.
    With a cursor, ``started_at <= cursor`` also prunes and ``(started_at, id) < cursor`` continues
    exactly after the last row returned (ties on started_at broken by id). ``where``: the table's own
    columns that must equal ``%(w0)s``, ``%(w1)s``...; ``columns``: more of them to return. ``match``: a
    transcript search (:mod:`callvault.search`): its condition, and its snippet as the last column."""
    cols = sql.SQL(", ").join(map(sql.Identifier, SUMMARY_COLUMNS + columns))
    if match is not None:
        cols = sql.SQL("{}, {}").format(cols, match.pg_snippet())
    keyset = (
        sql.SQL(" AND started_at <= %(cts)s AND (started_at, id) < (%(cts)s, %(cid)s)") if after_cursor else sql.SQL("")
    )
    filters = sql.SQL("").join(
        sql.SQL(" AND {} = {}").format(sql.Identifier(c), sql.Placeholder(f"w{i}")) for i, c in enumerate(where)
    )
    if match is not None:
        filters = sql.SQL("{} AND {}").format(filters, match.pg_predicate())
    return sql.SQL(
        "SELECT {cols} FROM {t} WHERE tenant_id = %(tenant)s AND started_at >= %(since)s AND started_at < %(until)s"
        "{filters}{keyset} ORDER BY started_at DESC, id DESC LIMIT %(limit)s"
    ).format(cols=cols, t=_table(settings), filters=filters, keyset=keyset)


def own_columns(where: Mapping[str, object] | None, wanted: tuple[str, ...]) -> tuple[str, ...]:
    """The names of ``where`` and ``columns``, checked to be the table's own columns' names (pure): not
    callvault's, and plain lower-case identifiers (a name the table lacks is refused by the database)."""
    names = (*(where or {}), *wanted)
    for name in names:
        if not isinstance(name, str) or not _OWN.match(name) or name in columns.NAMES:
            raise InvalidSetting(
                f"{name!r} is not one of the table's own columns: where= and columns= take the columns "
                "`callvault columns list` shows (callvault's own are filtered through the arguments)"
            )
    return names


def get_call_sql(settings: Settings, *, pinned: bool) -> sql.Composed:
    """One call: with started_at it touches one partition; without, one unique-index probe per
    partition (the (tenant_id, call_id, started_at) key), never a scan."""
    pin = sql.SQL(" AND started_at = %(started_at)s") if pinned else sql.SQL("")
    base = sql.SQL(", ").join(map(sql.Literal, columns.NAMES))
    return sql.SQL(
        "SELECT {cols}, to_jsonb(c) - ARRAY[{base}]::text[] FROM {t} c "
        "WHERE tenant_id = %(tenant)s AND call_id = %(call)s{pin} LIMIT 1"
    ).format(cols=columns.column_list(), base=base, t=_table(settings), pin=pin)


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


# -- the plan of each read ------------------------------------------------------------------------
@dataclass(frozen=True)
class Read:
    """Everything a read decides, decided once (pure): the tenant, the statement, its parameters and
    how rows become the result. :class:`~callvault.query.Reader` and :class:`~callvault.query.AsyncReader`
    only run it."""

    tenant: str
    statement: sql.Composed
    params: dict[str, Any]
    result: Callable[[list[Any]], Any]
    tiers: Tiers | None = None  # with an archive store: what the archive may add


@dataclass(frozen=True)
class Tiers:
    """The archive half of a read across tiers (pure plan; the twins only run it).

    In the read's transaction the twins send :data:`ATTACHED_SQL` (``params``) pipelined with the read's
    statement; when ``missing(keys)`` gives parameters, partitions they have not seen yet are attached
    and :data:`BOUNDS_SQL` reads their bounds, for ``learn(keys, bounds)``. With the transaction over
    (and a pooled connection given back), ``after(hot rows, keys)`` says whether the archive is needed,
    as a blocking call to make (the async twin makes it on a thread, off the event loop), and
    ``result(hot rows, archive part or None)`` is the answer."""

    params: dict[str, Any]
    missing: Callable[[list[Any]], dict[str, Any] | None]
    learn: Callable[[list[Any], list[Any]], None]
    after: Callable[[list[Any], list[Any]], Callable[[], Any] | None]
    result: Callable[[list[Any], Any], Any]


def tiers_of(r: ReaderBase, after: Callable[[list[Any], list[Range]], Callable[[], Any] | None],
           result: Callable[[list[Any], Any], Any]) -> Tiers:  # fmt: skip
    known = r._attached  # (oid, xmin) -> bounds, kept by the reader across reads

    def missing(keys: list[Any]) -> dict[str, Any] | None:
        new = [oid for oid, xmin in keys if (oid, xmin) not in known]
        return {"oids": new} if new else None

    def learn(keys: list[Any], bounds: list[Any]) -> None:
        found = {oid: (lo, hi) for oid, lo, hi in bounds}
        for oid, xmin in keys:
            if oid in found:  # gone since (dropped): not attached any more
                known[(oid, xmin)] = found[oid]

    def ranges(keys: list[Any]) -> list[Range]:
        got = [known.get((oid, xmin), (None, None)) for oid, xmin in keys]
        return sorted((lo, hi) for lo, hi in got if lo is not None and hi is not None)

    parent = sql.Identifier(r.settings.schema, r.settings.table).as_string()
    return Tiers({"parent": parent}, missing, learn, lambda rows, keys: after(rows, ranges(keys)), result)


def recent(r: ReaderBase, tenant_id: UUID | str, since: datetime | None, until: datetime | None, limit: int,
            cursor: str | None, where: Mapping[str, object] | None = None,
            extra: tuple[str, ...] = (), match: Match | None = None) -> Read:  # fmt: skip
    params = window_params(tenant_id, since, until, r.max_window)
    params["limit"] = check_limit(limit)
    own_columns(where, extra)
    filters = tuple(where or {})
    params.update({f"w{i}": v for i, v in enumerate((where or {}).values())})
    if match is not None:
        params.update(match.params())
    if cursor:
        params["cts"], params["cid"] = decode_cursor(cursor)
    stmt = window_sql(r.settings, after_cursor=bool(cursor), where=filters, columns=extra, match=match)
    found = match is not None
    read = Read(params["tenant"], stmt, params, lambda rows: page_of(rows, limit, None, extra, found))
    if r.store_url is None:
        return read
    before = (params["cts"], params["cid"]) if cursor else None
    since, until, who = params["since"], params["until"], params["tenant"]

    def after(rows: list[Any], attached: list[Range]) -> Callable[[], Any] | None:
        from callvault.archive import tier as archive

        gaps = archive.uncovered(since, until, attached)
        if before is not None:  # nothing newer than the cursor can be on this page
            gaps = [(lo, min(hi, before[0] + _US)) for lo, hi in gaps if lo <= before[0]]
        if not gaps or (len(rows) == limit and rows[-1][2] >= gaps[-1][1]):
            return None  # the hot rows fill the page and are all newer than anything archived
        return lambda: archive._page(r._archive_store(), r.settings, who, gaps, before, limit, where, extra, match)

    return replace(read, tiers=tiers_of(r, after, lambda rows, part: page_of(rows, limit, part, extra, found)))


def get(r: ReaderBase, tenant_id: UUID | str, call_id: UUID | str, started_at: datetime | None) -> Read:
    if started_at is not None and (not isinstance(started_at, datetime) or started_at.tzinfo is None):
        raise InvalidSetting(f"started_at={started_at!r} must be a timezone-aware datetime (or None)")
    who, call = tenant_value(tenant_id), call_value(call_id)
    params = {"tenant": who, "call": call, "started_at": started_at}
    read = Read(who, get_call_sql(r.settings, pinned=started_at is not None), params,
                 lambda rows: record_of(rows[0]) if rows else None)  # fmt: skip
    if r.store_url is None or started_at is None:
        return read
    at = started_at.astimezone(UTC)

    def after(rows: list[Any], attached: list[Range]) -> Callable[[], Any] | None:
        from callvault.archive import tier as archive

        gaps = archive.uncovered(at, at + _US, attached)
        if rows or not gaps:
            return None  # found in Postgres, or its partition is attached: the hot table is the answer
        return lambda: archive._find(r._archive_store(), r.settings, who, call, at, gaps)

    def result(rows: list[Any], part: Any) -> CallRecord | None:
        if rows:
            return record_of(rows[0])
        return record_of(part, ARCHIVE) if part is not None else None

    return replace(read, tiers=tiers_of(r, after, result))


def count(r: ReaderBase, tenant_id: UUID | str, since: datetime | None, until: datetime | None) -> Read:
    params = window_params(tenant_id, since, until, r.max_window)
    return Read(params["tenant"], count_sql(r.settings), params, lambda rows: int(rows[0][0]) if rows else 0)


def daily(r: ReaderBase, tenant_id: UUID | str, since: datetime | None, until: datetime | None) -> Read:
    params = window_params(tenant_id, since, until, r.max_window)
    return Read(params["tenant"], daily_sql(r.settings), params,
                 lambda rows: [DayStat(day, int(n), int(total)) for day, n, total in rows])  # fmt: skip


def _hour_floor(ts: datetime) -> datetime:
    ts = ts.astimezone(UTC)
    return ts.replace(minute=0, second=0, microsecond=0)


def usage_sql(settings: Settings, by: str) -> sql.Composed:
    """The rollup of a tenant's window, grouped by hour, day or the dimension; the configured dimension
    (its key path) rides along in the first column, so a wrong ``by`` is told apart from no usage."""
    from callvault.config import META_SCHEMA

    group = {"hour": sql.SQL("hour"), "day": sql.SQL("date_trunc('day', hour, 'UTC')")}.get(by, sql.SQL("dimension"))
    return sql.SQL(
        "SELECT cfg.path, g.k, g.calls, g.seconds FROM (SELECT (SELECT path FROM {dims} WHERE parent_table = "
        "%(tbl)s) AS path) cfg LEFT JOIN LATERAL (SELECT {group} AS k, sum(calls)::bigint AS calls, "
        "sum(seconds)::bigint AS seconds FROM {u} WHERE parent_table = %(tbl)s AND tenant_id = %(tenant)s "
        "AND hour >= %(since)s AND hour < %(until)s GROUP BY 1 HAVING sum(calls) <> 0 ORDER BY 1) g ON true"
    ).format(dims=sql.Identifier(META_SCHEMA, "usage_dimension"), u=sql.Identifier(META_SCHEMA, "usage"), group=group)


def usage(r: ReaderBase, tenant_id: UUID | str, since: datetime | None, until: datetime | None, by: str) -> Read:
    """The plan of :meth:`Reader.usage`: the window widened to whole UTC hours (the rollup's grain)."""
    if not isinstance(by, str) or not by:
        raise InvalidSetting("by= must be 'day', 'hour' or the usage dimension's metadata key (e.g. 'agent')")
    cap = USAGE_MAX_HOURS if by == "hour" else USAGE_MAX_WINDOW
    lo, hi = check_window(since, until, cap)
    lo, hi = _hour_floor(lo), _hour_floor(hi - _US) + timedelta(hours=1)
    who = tenant_value(tenant_id)
    params: dict[str, Any] = {"tenant": who, "since": lo, "until": hi, "tbl": r.settings.qualified}
    key = None if by in ("day", "hour") else by.removeprefix("metadata.")

    def result(rows: list[Any]) -> list[UsageRow]:
        configured = rows[0][0] if rows else None
        if key is not None:
            have = ".".join(configured) if configured else None
            if have != key:
                now = f"it is {have}" if have else "none is set"
                raise InvalidSetting(
                    f"by={by!r}: usage is counted by one metadata key per table, and {now} for "
                    f"{r.settings.qualified}: `callvault usage --dimension {key}` sets it (and recounts), "
                    "or use by='day' / by='hour'"
                )
        out = []
        for _, k, calls, seconds in rows:
            if k is None and calls is None:
                continue  # no usage in the window
            if key is None:
                out.append(UsageRow(k, None, int(calls), int(seconds)))
            else:
                out.append(UsageRow(None, k or None, int(calls), int(seconds)))
        return out

    return Read(who, usage_sql(r.settings, by), params, result)


class ReaderBase:
    settings: Settings
    max_window: timedelta
    pipeline: bool
    store_url: str | None
    _store: Store | None
    _attached: dict[tuple[int, str], Bounds]  # attached partitions' bounds by (oid, pg_inherits xmin)

    def _setup(
        self, settings: Settings | None, max_window: timedelta | None, pipeline: bool, store_url: str | None
    ) -> None:
        self.settings = settings or from_env()
        self.max_window = max_window or max_window_of(self.settings)
        self.pipeline = pipeline
        self.store_url = checked_store_url(store_url or self.settings.archive_url)
        self._store = None
        self._attached = {}
        self._language: str | None = None  # the full-text index's language, read at the first words search

    def _archive_store(self) -> Store:
        """The archive store, opened (and, when named, checked to exist) on first use, then reused."""
        if self._store is None:
            from callvault.archive.location import read_store

            self._store = read_store(self.settings, self.store_url)
        return self._store


def checked_store_url(url: str | None) -> str | None:
    """``url`` when it is a store URL callvault can read (InvalidSetting naming the forms otherwise),
    checked without any I/O: a bucket or directory is only looked at when a read reaches the archive."""
    if url is None:
        return None
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if not (parsed.scheme == "s3" and parsed.netloc):
        from callvault.archive.store import open_store

        open_store(url)  # file URLs and paths open without I/O; anything else raises InvalidSetting
    return url


def _summary(row: Any, extra: tuple[str, ...], tier: str = HOT, snippet: bool = False) -> CallSummary:
    rid, call, started, ended, duration = row[:5]
    own = row[5 : 5 + len(extra)]
    return CallSummary(rid, call, started, ended, duration, tier, dict(zip(extra, own, strict=True)),
                       row[5 + len(extra)] if snippet else None)  # fmt: skip


def page_of(rows: list[Any], limit: int, archived: Any = None, extra: tuple[str, ...] = (),
            snippet: bool = False) -> Page:  # fmt: skip
    calls = [_summary(r, extra, HOT, snippet) for r in rows]
    pruned: tuple[date, ...] = ()
    if archived is not None:  # an ArchivePage: merge by (started_at, id), newest first; hot wins an id
        hot = {c.id for c in calls}
        calls += [_summary(a, extra, ARCHIVE, snippet) for a in archived.calls if a[0] not in hot]
        calls = sorted(calls, key=lambda c: (c.started_at, c.id), reverse=True)[:limit]
        pruned = archived.pruned
    last = calls[-1] if len(calls) == limit else None
    return Page(calls=calls, next_cursor=encode_cursor(last.started_at, last.id) if last else None, pruned=pruned)
