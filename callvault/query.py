"""Tenant-scoped reads that always pin the partition key with raw ``>=`` / ``<`` bounds.

Every read names one tenant and a bounded window ``[since, until)``; a window that is missing, empty,
or wider than ``max_window`` (default: the table's hot retention) is refused before any SQL runs.
Statements use the bounds as parameters, never functions of ``started_at``, so the planner prunes
partitions — at plan time for custom plans, at executor start ("Subplans Removed") for the generic
plans Postgres may switch to when a statement is prepared.

Every read runs in its own transaction with the tenant set transaction-locally
(:func:`callvault.tenancy.tenant`), so under row-level security the application role sees that
tenant's rows and nothing else, even if a statement's own ``tenant_id`` filter were wrong.

The readers never prepare their statements server-side (``prepare=False``, whatever the connection's
``prepare_threshold``): a prepared statement lives on one server connection, and PgBouncer 1.18 in
transaction mode hands the next transaction another one (``"_pg3_0" already exists`` / ``does not
exist``). So a reader is safe behind PgBouncer on any connection; each read is planned with its own
bounds (plan-time pruning).

**Across tiers.** Given an archive store (``store_url=``, or the configured ``archive_url``),
:meth:`Reader.recent_calls` and :meth:`Reader.get_call` (with ``started_at``) also serve the parts of a
window that no attached partition covers from the archive (:mod:`callvault.archive.reader`: the
manifests say which periods are archived, DuckDB reads that tenant's objects), merged in the same order
and with the same cursor; each row says which tier served it (``CallSummary.tier``, ``Page.tiers``). A
period that is attached is read from Postgres only, even when it is archived too (restored). Which
partitions are attached is read from the catalog in the read's own transaction (pipelined with the
query): a window the hot table covers never touches the store. Without a store, reads are exactly the
hot-only reads they always were.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from callvault.config import Settings, from_env
from callvault.db import Conn
from callvault.errors import InvalidSetting
from callvault.plans import walk
from callvault.tenancy._async_session import atenant
from callvault.tenancy._sync_session import tenant
from callvault.tenancy.ids import tenant_value

if TYPE_CHECKING:  # the archive tier loads only when a read reaches it
    from callvault.archive.store import Store
from callvault.query_base import (
    _US,
    Bounds,
    Range,
)
from callvault.query_base import (
    ARCHIVE as ARCHIVE,
)
from callvault.query_base import (
    ATTACHED_SQL as ATTACHED_SQL,
)
from callvault.query_base import (
    BOUNDS_SQL as BOUNDS_SQL,
)
from callvault.query_base import (
    DEFAULT_LIMIT as DEFAULT_LIMIT,
)
from callvault.query_base import (
    HOT as HOT,
)
from callvault.query_base import (
    MAX_LIMIT as MAX_LIMIT,
)
from callvault.query_base import (
    SUMMARY_COLUMNS as SUMMARY_COLUMNS,
)
from callvault.query_base import (
    CallRecord as CallRecord,
)
from callvault.query_base import (
    CallSummary as CallSummary,
)
from callvault.query_base import (
    DayStat as DayStat,
)
from callvault.query_base import (
    Page as Page,
)
from callvault.query_base import (
    WindowRefused as WindowRefused,
)
from callvault.query_base import (
    attached_ranges as attached_ranges,
)
from callvault.query_base import (
    call_value as call_value,
)
from callvault.query_base import (
    check_limit as check_limit,
)
from callvault.query_base import (
    check_window as check_window,
)
from callvault.query_base import (
    count_sql as count_sql,
)
from callvault.query_base import (
    daily_sql as daily_sql,
)
from callvault.query_base import (
    decode_cursor as decode_cursor,
)
from callvault.query_base import (
    encode_cursor as encode_cursor,
)
from callvault.query_base import (
    get_call_sql as get_call_sql,
)
from callvault.query_base import (
    max_window_of as max_window_of,
)
from callvault.query_base import (
    window_params as window_params,
)
from callvault.query_base import (
    window_sql as window_sql,
)


@dataclass(frozen=True)
class _Read:
    """Everything a read decides, decided once (pure): the tenant, the statement, its parameters and
    how rows become the result. :class:`Reader` and :class:`AsyncReader` only run it."""

    tenant: str
    statement: sql.Composed
    params: dict[str, Any]
    result: Callable[[list[Any]], Any]
    tiers: _Tiers | None = None  # with an archive store: what the archive may add


@dataclass(frozen=True)
class _Tiers:
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


def _tiers(r: _Base, after: Callable[[list[Any], list[Range]], Callable[[], Any] | None],
           result: Callable[[list[Any], Any], Any]) -> _Tiers:  # fmt: skip
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
    return _Tiers({"parent": parent}, missing, learn, lambda rows, keys: after(rows, ranges(keys)), result)


def _recent(r: _Base, tenant_id: UUID | str, since: datetime | None, until: datetime | None, limit: int,
            cursor: str | None) -> _Read:  # fmt: skip
    params = window_params(tenant_id, since, until, r.max_window)
    params["limit"] = check_limit(limit)
    if cursor:
        params["cts"], params["cid"] = decode_cursor(cursor)
    read = _Read(params["tenant"], window_sql(r.settings, after_cursor=bool(cursor)), params,
                 lambda rows: _page(rows, limit))  # fmt: skip
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
        return lambda: archive._page(r._archive_store(), r.settings, who, gaps, before, limit)

    return replace(read, tiers=_tiers(r, after, lambda rows, part: _page(rows, limit, part)))


def _get(r: _Base, tenant_id: UUID | str, call_id: UUID | str, started_at: datetime | None) -> _Read:
    if started_at is not None and (not isinstance(started_at, datetime) or started_at.tzinfo is None):
        raise InvalidSetting(f"started_at={started_at!r} must be a timezone-aware datetime (or None)")
    who, call = tenant_value(tenant_id), call_value(call_id)
    params = {"tenant": who, "call": call, "started_at": started_at}
    read = _Read(who, get_call_sql(r.settings, pinned=started_at is not None), params,
                 lambda rows: CallRecord(*rows[0]) if rows else None)  # fmt: skip
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
            return CallRecord(*rows[0])
        return replace(CallRecord(*part), tier=ARCHIVE) if part is not None else None

    return replace(read, tiers=_tiers(r, after, result))


def _count(r: _Base, tenant_id: UUID | str, since: datetime | None, until: datetime | None) -> _Read:
    params = window_params(tenant_id, since, until, r.max_window)
    return _Read(params["tenant"], count_sql(r.settings), params, lambda rows: int(rows[0][0]) if rows else 0)


def _daily(r: _Base, tenant_id: UUID | str, since: datetime | None, until: datetime | None) -> _Read:
    params = window_params(tenant_id, since, until, r.max_window)
    return _Read(params["tenant"], daily_sql(r.settings), params,
                 lambda rows: [DayStat(day, int(n), int(total)) for day, n, total in rows])  # fmt: skip


class _Base:
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
        self.store_url = _checked_store_url(store_url or self.settings.archive_url)
        self._store = None
        self._attached = {}

    def _archive_store(self) -> Store:
        """The archive store, opened (and, when named, checked to exist) on first use, then reused."""
        if self._store is None:
            from callvault.archive.location import read_store

            self._store = read_store(self.settings, self.store_url)
        return self._store


def _checked_store_url(url: str | None) -> str | None:
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


class Reader(_Base):
    """Tenant-scoped, time-pinned reads (sync). The asyncio twin is :class:`AsyncReader`.

    ``source``: a ``psycopg.Connection`` or a ``psycopg_pool.ConnectionPool`` (a connection is taken
    from the pool for each read and given back). Connect as the application role (``callvault_app``,
    row-level security applies: each read sees one tenant's rows only); behind PgBouncer in
    transaction mode nothing needs to change (reads are never prepared server-side).

    ``settings``: which table (default: the one configuration, :func:`callvault.config.from_env`).
    ``max_window``: the widest ``[since, until)`` accepted (default: the table's hot retention).
    ``pipeline``: send BEGIN, the tenant and the query in one round trip (pays over a network).
    ``store_url``: the archive store (``s3://bucket/prefix`` or ``file:///dir``; default the settings'
    ``archive_url``, ``CALLVAULT_ARCHIVE_URL``). With one, :meth:`recent_calls` and :meth:`get_call` (given
    ``started_at``) also read archived weeks (see the module docstring); without, reads are hot only.

    Ids are ``uuid.UUID`` or their text; a bad id raises :class:`callvault.errors.InvalidSetting`.
    A missing, empty or too-wide window raises :class:`WindowRefused` before any SQL runs::

        from psycopg_pool import ConnectionPool
        from callvault.query import Reader

        pool = ConnectionPool("postgresql://callvault_app@db/calls", kwargs={"prepare_threshold": None})
        reader = Reader(pool)
        for call in reader.recent_calls("6f1c...", since=datetime.now(UTC) - timedelta(days=7)):
            print(call.call_id, call.started_at)
    """

    def __init__(
        self, source: Conn | ConnectionPool[Any] | None = None, settings: Settings | None = None, *,
        max_window: timedelta | None = None, pipeline: bool = False, conn: Conn | None = None,
        store_url: str | None = None,
    ) -> None:  # fmt: skip
        chosen = source if source is not None else conn
        if chosen is None:
            raise InvalidSetting("Reader needs a connection or a pool: Reader(conn) or Reader(pool)")
        self.source: Conn | ConnectionPool[Any] = chosen
        self._setup(settings, max_window, pipeline, store_url)

    @property
    def conn(self) -> Conn:
        """The connection given (AttributeError-free only when a connection, not a pool, was given)."""
        if isinstance(self.source, psycopg.Connection):
            return self.source
        raise InvalidSetting("this Reader reads through a pool: it has no single connection")

    def _run(self, read: _Read) -> Any:
        if isinstance(self.source, psycopg.Connection):
            got = self._on(self.source, read)
        else:
            with self.source.connection() as conn:
                got = self._on(conn, read)
        if read.tiers is None:
            return got
        rows, attached = got  # the connection is back in the pool before the store is read
        fetch = read.tiers.after(rows, attached)
        return read.tiers.result(rows, fetch() if fetch is not None else None)

    def _on(self, conn: Conn, read: _Read) -> Any:
        if read.tiers is not None:
            return self._tiered(conn, read, read.tiers)
        with tenant(conn, read.tenant, pipeline=self.pipeline):
            rows = conn.execute(read.statement, read.params, prepare=False).fetchall()
        return read.result(rows)

    def _tiered(self, conn: Conn, read: _Read, tiers: _Tiers) -> tuple[list[Any], list[Any]]:
        with tenant(conn, read.tenant, pipeline=self.pipeline):
            with conn.pipeline():  # the attached partitions ride along with the query: no extra round trip
                hot = conn.execute(read.statement, read.params, prepare=False)
                attached = conn.execute(ATTACHED_SQL, tiers.params, prepare=False)
            rows, keys = hot.fetchall(), attached.fetchall()
            if (new := tiers.missing(keys)) is not None:  # partitions attached since the last read
                tiers.learn(keys, conn.execute(BOUNDS_SQL, new, prepare=False).fetchall())
        return rows, keys

    def recent_calls(
        self, tenant_id: UUID | str, *, since: datetime | None = None, until: datetime | None = None,
        limit: int = DEFAULT_LIMIT, cursor: str | None = None,
    ) -> Page:  # fmt: skip
        """The tenant's calls in ``[since, until)`` (``until`` default: now), newest first, ``limit`` per
        page (1..10,000); pass ``page.next_cursor`` back as ``cursor=`` for the next, older page.

        With an archive store, the parts of the window no attached partition covers are read from the
        archive and merged in (same order, same cursor; a page can span both tiers: see
        ``CallSummary.tier``, ``Page.tiers``, and ``Page.pruned`` for archived weeks deleted by archive
        retention). A page the hot rows fill with calls newer than anything archived, and any window the
        hot table covers, never touch the store.

        :raises WindowRefused: a missing, naive, empty or too-wide window (before any SQL).
        :raises InvalidSetting: a bad tenant id, cursor or limit.
        :raises StoreUnavailable: the read reaches the archive and the store cannot be read (exit code 69).
        """
        return self._run(_recent(self, tenant_id, since, until, limit, cursor))  # type: ignore[no-any-return]

    def get_call(
        self, tenant_id: UUID | str, call_id: UUID | str, started_at: datetime | None = None
    ) -> CallRecord | None:
        """One call with transcript and metadata, or ``None``. With ``started_at`` it reads one
        partition; without, one unique-index probe per partition.

        Archived calls are found only with ``started_at`` (and an archive store): when no attached
        partition holds that instant, the archived period that does is read (``CallRecord.tier ==
        "archive"``). Without ``started_at`` the lookup is hot only, store or not (probing every archived
        period for an id would read the whole tenant's archive).

        :raises ArchivePruned: ``started_at`` is in an archived period whose objects for the tenant were
            deleted by archive retention: the call, if it existed, is gone.
        :raises StoreUnavailable: the lookup reaches the archive and the store cannot be read.
        """
        return self._run(_get(self, tenant_id, call_id, started_at))  # type: ignore[no-any-return]

    def count_calls(
        self, tenant_id: UUID | str, *, since: datetime | None = None, until: datetime | None = None
    ) -> int:
        """How many calls the tenant has in ``[since, until)``."""
        return self._run(_count(self, tenant_id, since, until))  # type: ignore[no-any-return]

    def daily_stats(
        self, tenant_id: UUID | str, *, since: datetime | None = None, until: datetime | None = None
    ) -> list[DayStat]:
        """Calls and talk time per UTC day in ``[since, until)``, oldest day first."""
        return self._run(_daily(self, tenant_id, since, until))  # type: ignore[no-any-return]


class AsyncReader(_Base):
    """The asyncio twin of :class:`Reader`: same reads, same checks, same errors (the plan of each read
    is shared code; only the awaiting differs; the archive tier, blocking I/O, runs on a thread with
    ``asyncio.to_thread``, off the event loop). ``source``: a ``psycopg.AsyncConnection`` or a
    ``psycopg_pool.AsyncConnectionPool``::

        pool = AsyncConnectionPool(app_dsn, kwargs={"prepare_threshold": None}, open=False)
        await pool.open()
        reader = AsyncReader(pool)
        page = await reader.recent_calls(tenant_id, since=week_ago)
    """

    def __init__(
        self, source: psycopg.AsyncConnection[Any] | AsyncConnectionPool[Any] | None = None,
        settings: Settings | None = None, *, max_window: timedelta | None = None, pipeline: bool = False,
        conn: psycopg.AsyncConnection[Any] | None = None, store_url: str | None = None,
    ) -> None:  # fmt: skip
        chosen = source if source is not None else conn
        if chosen is None:
            raise InvalidSetting("AsyncReader needs a connection or a pool: AsyncReader(conn) or AsyncReader(pool)")
        self.source: psycopg.AsyncConnection[Any] | AsyncConnectionPool[Any] = chosen
        self._setup(settings, max_window, pipeline, store_url)

    @property
    def conn(self) -> psycopg.AsyncConnection[Any]:
        """The connection given (only when a connection, not a pool, was given)."""
        if isinstance(self.source, psycopg.AsyncConnection):
            return self.source
        raise InvalidSetting("this AsyncReader reads through a pool: it has no single connection")

    async def _run(self, read: _Read) -> Any:
        if isinstance(self.source, psycopg.AsyncConnection):
            got = await self._on(self.source, read)
        else:
            async with self.source.connection() as conn:
                got = await self._on(conn, read)
        if read.tiers is None:
            return got
        rows, attached = got  # the connection is back in the pool before the store is read
        fetch = read.tiers.after(rows, attached)
        return read.tiers.result(rows, await asyncio.to_thread(fetch) if fetch is not None else None)

    async def _on(self, conn: psycopg.AsyncConnection[Any], read: _Read) -> Any:
        if read.tiers is not None:
            return await self._tiered(conn, read, read.tiers)
        async with atenant(conn, read.tenant, pipeline=self.pipeline):
            cur = await conn.execute(read.statement, read.params, prepare=False)
            rows = await cur.fetchall()
        return read.result(rows)

    async def _tiered(
        self, conn: psycopg.AsyncConnection[Any], read: _Read, tiers: _Tiers
    ) -> tuple[list[Any], list[Any]]:
        async with atenant(conn, read.tenant, pipeline=self.pipeline):
            async with conn.pipeline():
                hot = await conn.execute(read.statement, read.params, prepare=False)
                attached = await conn.execute(ATTACHED_SQL, tiers.params, prepare=False)
            rows, keys = await hot.fetchall(), await attached.fetchall()
            if (new := tiers.missing(keys)) is not None:
                cur = await conn.execute(BOUNDS_SQL, new, prepare=False)
                tiers.learn(keys, await cur.fetchall())
        return rows, keys

    async def recent_calls(
        self, tenant_id: UUID | str, *, since: datetime | None = None, until: datetime | None = None,
        limit: int = DEFAULT_LIMIT, cursor: str | None = None,
    ) -> Page:  # fmt: skip
        """See :meth:`Reader.recent_calls`."""
        return await self._run(_recent(self, tenant_id, since, until, limit, cursor))  # type: ignore[no-any-return]

    async def get_call(
        self, tenant_id: UUID | str, call_id: UUID | str, started_at: datetime | None = None
    ) -> CallRecord | None:
        """See :meth:`Reader.get_call`."""
        return await self._run(_get(self, tenant_id, call_id, started_at))  # type: ignore[no-any-return]

    async def count_calls(
        self, tenant_id: UUID | str, *, since: datetime | None = None, until: datetime | None = None
    ) -> int:
        """See :meth:`Reader.count_calls`."""
        return await self._run(_count(self, tenant_id, since, until))  # type: ignore[no-any-return]

    async def daily_stats(
        self, tenant_id: UUID | str, *, since: datetime | None = None, until: datetime | None = None
    ) -> list[DayStat]:
        """See :meth:`Reader.daily_stats`."""
        return await self._run(_daily(self, tenant_id, since, until))  # type: ignore[no-any-return]


def _page(rows: list[Any], limit: int, archived: Any = None) -> Page:
    calls = [CallSummary(*r) for r in rows]
    pruned: tuple[date, ...] = ()
    if archived is not None:  # an ArchivePage: merge by (started_at, id), newest first; hot wins an id
        hot = {c.id for c in calls}
        calls += [replace(CallSummary(*a), tier=ARCHIVE) for a in archived.calls if a[0] not in hot]
        calls = sorted(calls, key=lambda c: (c.started_at, c.id), reverse=True)[:limit]
        pruned = archived.pruned
    last = calls[-1] if len(calls) == limit else None
    return Page(calls=calls, next_cursor=encode_cursor(last.started_at, last.id) if last else None, pruned=pruned)


def explain_window(
    conn: Conn, settings: Settings, tenant: UUID, since: datetime, until: datetime, limit: int = DEFAULT_LIMIT
) -> tuple[list[str], list[str]]:
    """(plan lines, partitions scanned) for the window query, as an application would run it."""
    params = {"tenant": tenant, "since": since, "until": until, "limit": limit}
    stmt = sql.SQL("EXPLAIN (COSTS OFF, FORMAT JSON) {}").format(window_sql(settings))
    raw = conn.cursor().execute(stmt, params, prepare=False).fetchone()
    assert raw is not None
    plan = raw[0] if not isinstance(raw[0], str) else json.loads(raw[0])
    scanned = sorted(set(walk(plan[0]["Plan"])[0]))
    text = [r[0] for r in conn.execute(sql.SQL("EXPLAIN (COSTS OFF) {}").format(window_sql(settings)), params)]
    return text, scanned
