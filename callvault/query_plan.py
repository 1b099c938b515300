"""The plan of each read, decided once (pure): which tenant, which statement with which bounds, how rows
become the answer, and what the archive tier may add. :class:`~callvault.query.AsyncReader` and its
generated twin :class:`~callvault.query.Reader` only run these plans (see :mod:`callvault.query`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

from psycopg import sql

from callvault.config import Settings, from_env
from callvault.errors import InvalidSetting
from callvault.query_base import (
    _US,
    ARCHIVE,
    Bounds,
    CallRecord,
    CallSummary,
    DayStat,
    Page,
    Range,
    call_value,
    check_limit,
    count_sql,
    daily_sql,
    decode_cursor,
    encode_cursor,
    get_call_sql,
    max_window_of,
    window_params,
    window_sql,
)  # fmt: skip
from callvault.tenancy.ids import tenant_value

if TYPE_CHECKING:  # the archive tier loads only when a read reaches it
    from callvault.archive.store import Store


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
            cursor: str | None) -> Read:  # fmt: skip
    params = window_params(tenant_id, since, until, r.max_window)
    params["limit"] = check_limit(limit)
    if cursor:
        params["cts"], params["cid"] = decode_cursor(cursor)
    read = Read(params["tenant"], window_sql(r.settings, after_cursor=bool(cursor)), params,
                 lambda rows: page_of(rows, limit))  # fmt: skip
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

    return replace(read, tiers=tiers_of(r, after, lambda rows, part: page_of(rows, limit, part)))


def get(r: ReaderBase, tenant_id: UUID | str, call_id: UUID | str, started_at: datetime | None) -> Read:
    if started_at is not None and (not isinstance(started_at, datetime) or started_at.tzinfo is None):
        raise InvalidSetting(f"started_at={started_at!r} must be a timezone-aware datetime (or None)")
    who, call = tenant_value(tenant_id), call_value(call_id)
    params = {"tenant": who, "call": call, "started_at": started_at}
    read = Read(who, get_call_sql(r.settings, pinned=started_at is not None), params,
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

    return replace(read, tiers=tiers_of(r, after, result))


def count(r: ReaderBase, tenant_id: UUID | str, since: datetime | None, until: datetime | None) -> Read:
    params = window_params(tenant_id, since, until, r.max_window)
    return Read(params["tenant"], count_sql(r.settings), params, lambda rows: int(rows[0][0]) if rows else 0)


def daily(r: ReaderBase, tenant_id: UUID | str, since: datetime | None, until: datetime | None) -> Read:
    params = window_params(tenant_id, since, until, r.max_window)
    return Read(params["tenant"], daily_sql(r.settings), params,
                 lambda rows: [DayStat(day, int(n), int(total)) for day, n, total in rows])  # fmt: skip


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


def page_of(rows: list[Any], limit: int, archived: Any = None) -> Page:
    calls = [CallSummary(*r) for r in rows]
    pruned: tuple[date, ...] = ()
    if archived is not None:  # an ArchivePage: merge by (started_at, id), newest first; hot wins an id
        hot = {c.id for c in calls}
        calls += [replace(CallSummary(*a), tier=ARCHIVE) for a in archived.calls if a[0] not in hot]
        calls = sorted(calls, key=lambda c: (c.started_at, c.id), reverse=True)[:limit]
        pruned = archived.pruned
    last = calls[-1] if len(calls) == limit else None
    return Page(calls=calls, next_cursor=encode_cursor(last.started_at, last.id) if last else None, pruned=pruned)
