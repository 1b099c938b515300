"""AsyncReader: tenant-scoped, time-pinned reads for asyncio (see :mod:`callvault.query` for the why).

THE SOURCE of both twins: :class:`callvault.query.Reader` (``_sync_reader.py``) is generated from this
module by ``scripts/async_to_sync.py`` (``make sync-twins``); ``tests/test_twins.py`` checks it is current.
What a read does is decided once in :mod:`callvault.query_base`; the twins only run the qb.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
from psycopg_pool import AsyncConnectionPool

from callvault import query_base as qb
from callvault.config import Settings
from callvault.errors import InvalidSetting
from callvault.query_base import ATTACHED_SQL, BOUNDS_SQL, DEFAULT_LIMIT, CallRecord, DayStat, Page, UsageRow
from callvault.search import DEFAULT_LANGUAGE, LANGUAGE_SQL, WORDS, Match, language_from, language_param
from callvault.tenancy._async_session import atenant

Source = psycopg.AsyncConnection[Any] | AsyncConnectionPool[Any]


class AsyncReader(qb.ReaderBase):
    """Tenant-scoped, time-pinned reads for asyncio (the sync twin, :class:`callvault.query.Reader`,
    is the same class without the awaiting).

    ``source``: a ``psycopg.AsyncConnection`` or a ``psycopg_pool.AsyncConnectionPool`` (a connection is
    taken from the pool for each read and given back). Connect as the application role (``callvault_app``,
    row-level security applies: each read sees one tenant's rows only); behind PgBouncer in
    transaction mode nothing needs to change (reads are never prepared server-side).

    ``settings``: which table (default: the one configuration, :func:`callvault.config.from_env`).
    ``max_window``: the widest ``[since, until)`` accepted (default: the table's hot retention).
    ``pipeline``: send BEGIN, the tenant and the query in one round trip (pays over a network).
    ``store_url``: the archive store (``s3://bucket/prefix`` or ``file:///dir``; default the settings'
    ``archive_url``, ``CALLVAULT_ARCHIVE_URL``). With one, :meth:`recent_calls` and :meth:`get_call` (given
    ``started_at``) also read archived weeks (see :mod:`callvault.query`); without, reads are hot only.

    Ids are ``uuid.UUID`` or their text; a bad id raises :class:`callvault.errors.InvalidSetting`.
    A missing, empty or too-wide window raises :class:`~callvault.query.WindowRefused` before any SQL runs::

        from psycopg_pool import AsyncConnectionPool
        from callvault.query import AsyncReader

        dsn = "postgresql://callvault_app@db/calls"
        pool = AsyncConnectionPool(dsn, kwargs={"prepare_threshold": None}, open=False)
        await pool.open()
        reader = AsyncReader(pool)
        page = await reader.recent_calls("6f1c...", since=datetime.now(UTC) - timedelta(days=7))
        for call in page:
            print(call.call_id, call.started_at)
    """

    def __init__(
        self, source: Source | None = None, settings: Settings | None = None, *, max_window: timedelta | None = None,
        pipeline: bool = False, conn: psycopg.AsyncConnection[Any] | None = None, store_url: str | None = None,
    ) -> None:  # fmt: skip
        chosen = source if source is not None else conn
        if chosen is None:
            raise InvalidSetting("AsyncReader needs a connection or a pool: AsyncReader(conn) or AsyncReader(pool)")
        self.source: Source = chosen
        self._setup(settings, max_window, pipeline, store_url)

    @property
    def conn(self) -> psycopg.AsyncConnection[Any]:
        """The connection given (only when a connection, not a pool, was given)."""
        if isinstance(self.source, psycopg.AsyncConnection):
            return self.source
        raise InvalidSetting("this AsyncReader reads through a pool: it has no single connection")

    async def _run(self, read: qb.Read) -> Any:
        if isinstance(self.source, psycopg.AsyncConnection):
            got = await self._on(self.source, read)
        else:
            async with self.source.connection() as conn:
                got = await self._on(conn, read)
        if read.tiers is None:
            return got
        rows, attached = got  # the connection is back in the pool before the store is read
        fetch = read.tiers.after(rows, attached)
        # the archive tier is blocking I/O: the async twin runs it on a thread, off the event loop
        return read.tiers.result(rows, await asyncio.to_thread(fetch) if fetch is not None else None)

    async def _on(self, conn: psycopg.AsyncConnection[Any], read: qb.Read) -> Any:
        if read.tiers is not None:
            return await self._tiered(conn, read, read.tiers)
        async with atenant(conn, read.tenant, pipeline=self.pipeline):
            cur = await conn.execute(read.statement, read.params, prepare=False)
            rows = await cur.fetchall()
        return read.result(rows)

    async def _tiered(
        self, conn: psycopg.AsyncConnection[Any], read: qb.Read, tiers: qb.Tiers
    ) -> tuple[list[Any], list[Any]]:
        async with atenant(conn, read.tenant, pipeline=self.pipeline):
            async with conn.pipeline():  # the attached partitions ride along with the query: no extra round trip
                hot = await conn.execute(read.statement, read.params, prepare=False)
                attached = await conn.execute(ATTACHED_SQL, tiers.params, prepare=False)
            rows, keys = await hot.fetchall(), await attached.fetchall()
            if (new := tiers.missing(keys)) is not None:  # partitions attached since the last read
                cur = await conn.execute(BOUNDS_SQL, new, prepare=False)
                tiers.learn(keys, await cur.fetchall())
        return rows, keys

    async def recent_calls(
        self, tenant_id: UUID | str, *, since: datetime | None = None, until: datetime | None = None,
        limit: int = DEFAULT_LIMIT, cursor: str | None = None, where: Mapping[str, object] | None = None,
        columns: Sequence[str] = (),
    ) -> Page:  # fmt: skip
        """The tenant's calls in ``[since, until)`` (``until`` default: now), newest first, ``limit`` per
        page (1..10,000); pass ``page.next_cursor`` back as ``cursor=`` for the next, older page.

        The table's own columns (``callvault columns list``): ``where={"agent_id": "a-7"}`` keeps the calls
        whose columns equal those values (an indexed column, ``columns add --index``, is served by its
        index; the read stays pinned to the tenant and the window), and ``columns=("agent_id",)`` returns
        them in each ``CallSummary.extra``.

        With an archive store, the parts of the window no attached partition covers are read from the
        archive and merged in (same order, same cursor; a page can span both tiers: see
        ``CallSummary.tier``, ``Page.tiers``, and ``Page.pruned`` for archived weeks deleted by archive
        retention). A page the hot rows fill with calls newer than anything archived, and any window the
        hot table covers, never touch the store.

        :raises WindowRefused: a missing, naive, empty or too-wide window (before any SQL).
        :raises InvalidSetting: a bad tenant id, cursor or limit.
        :raises StoreUnavailable: the read reaches the archive and the store cannot be read (exit code 69).
        """
        read = qb.recent(self, tenant_id, since, until, limit, cursor, where, tuple(columns))
        return await self._run(read)  # type: ignore[no-any-return]

    async def search(
        self, tenant_id: UUID | str, text: str, *, since: datetime | None = None, until: datetime | None = None,
        limit: int = DEFAULT_LIMIT, cursor: str | None = None, mode: str = "phrase", language: str | None = None,
    ) -> Page:  # fmt: skip
        """The tenant's calls in ``[since, until)`` whose transcript matches ``text``, newest first, one page
        (the same window, limit and ``cursor`` as :meth:`recent_calls`); each ``CallSummary.snippet`` holds
        the match in its context, marked « ». With an archive store, archived weeks of the window are
        searched too (only the tenant's objects; ``CallSummary.tier`` says where each hit was found).

        ``mode="phrase"`` (default): the transcript contains ``text`` as written, ignoring case (at least 3
        characters). ``mode="words"``: every word of ``text``, by PostgreSQL full-text search in the
        language of the table's index (``callvault search index --language``; ``language=`` overrides;
        the archive matches whole words without stemming). See :mod:`callvault.search`.

        :raises InvalidSetting: an empty, too short or too long text, a bad mode, tenant, cursor or limit
            (the message never repeats the text: it is call content).
        :raises WindowRefused: a missing, naive, empty or too-wide window (before any SQL).
        """
        match = Match.parse(text, mode, language)  # bad input is named before any SQL
        if mode == WORDS and language is None:
            match = replace(match, language=await self._search_language())
        return await self._run(qb.recent(self, tenant_id, since, until, limit, cursor, match=match))  # type: ignore[no-any-return]

    async def _search_language(self) -> str:
        """The language of the table's full-text index, read once per reader (the default without one)."""
        if self._language is None:
            if isinstance(self.source, psycopg.AsyncConnection):
                self._language = await self._read_language(self.source)
            else:
                async with self.source.connection() as conn:
                    self._language = await self._read_language(conn)
        return self._language

    async def _read_language(self, conn: psycopg.AsyncConnection[Any]) -> str:
        async with conn.transaction():
            cur = await conn.execute(LANGUAGE_SQL, language_param(self.settings), prepare=False)
            return language_from(await cur.fetchone()) or DEFAULT_LANGUAGE

    async def get_call(
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
        return await self._run(qb.get(self, tenant_id, call_id, started_at))  # type: ignore[no-any-return]

    async def count_calls(
        self, tenant_id: UUID | str, *, since: datetime | None = None, until: datetime | None = None
    ) -> int:
        """How many calls the tenant has in ``[since, until)``."""
        return await self._run(qb.count(self, tenant_id, since, until))  # type: ignore[no-any-return]

    async def usage(
        self, tenant_id: UUID | str, *, since: datetime | None = None, until: datetime | None = None, by: str = "day"
    ) -> list[UsageRow]:
        """The tenant's calls and talk seconds from the usage rollup (:mod:`callvault.usage`), which keeps
        counting weeks after they are archived and dropped: per UTC day (``by="day"``), hour (``"hour"``, a
        window of at most 93 days) or value of the table's usage dimension (``by="agent"``: the metadata key
        set with ``callvault usage --dimension``), oldest first. The window is widened to whole UTC hours.

        :raises InvalidSetting: a bad tenant, a ``by`` that is not day, hour or the configured dimension.
        :raises WindowRefused: a missing, naive, empty or too-wide window (ten years; 93 days by hour).
        """
        return await self._run(qb.usage(self, tenant_id, since, until, by))  # type: ignore[no-any-return]

    async def daily_stats(
        self, tenant_id: UUID | str, *, since: datetime | None = None, until: datetime | None = None
    ) -> list[DayStat]:
        """Calls and talk time per UTC day in ``[since, until)``, oldest day first."""
        return await self._run(qb.daily(self, tenant_id, since, until))  # type: ignore[no-any-return]
