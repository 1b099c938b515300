"""Reads, tenant sessions and the ingest writer through a real PgBouncer in transaction pooling mode.

PgBouncer (tests/pgbouncer.py) gives each (database, role) pool a single server connection, so
transactions of concurrent clients take turns on the same Postgres backend: a tenant setting or a
server-side prepared statement that outlived its transaction would reach another client here.
psycopg's defaults prepare a statement server-side on its 6th execution (``_pg3_0``, ``_pg3_1``...)
and PgBouncer 1.18 does not track prepared statements, so two clients collide on those names
(issue 12: ``DuplicatePreparedStatement: "_pg3_0" already exists``). callvault's own statements are
never prepared server-side and the connections it opens have ``prepare_threshold=None``;
connections a user hands in need ``prepare_threshold=None`` for the user's own statements
(``test_user_statements_need_prepare_threshold_none`` shows why).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg import errors as pgerr
from psycopg_pool import ConnectionPool

from callvault.ingest.aio import AsyncWriter
from callvault.ingest.writer import Writer
from callvault.query import MAX_LIMIT, AsyncReader, Reader
from callvault.tenancy import tenant
from tests.helpers import make_calls
from tests.pgbouncer import PgBouncer, pgbouncer_fixture  # noqa: F401  (the `pgbouncer` fixture)
from tests.test_tenancy import Env, drop_roles, make_env

CLIENTS_OPS = 120  # reads per client; 4 clients: 480 interleaved reads
_counter = itertools.count()
# What a server-side prepared statement of one client does to another through transaction pooling.
PREPARED_ERRORS = (pgerr.DuplicatePreparedStatement, pgerr.InvalidSqlStatementName, pgerr.ProtocolViolation)


@pytest.fixture
def env(dsn: str) -> Iterator[Env]:
    e = make_env(dsn, f"cvpgb{os.getpid()}_{next(_counter)}")
    yield e
    drop_roles(dsn, e.roles)


def stored_calls(env: Env) -> dict[UUID, set[UUID]]:
    """Call ids per tenant as stored (read as the superuser, directly: the truth to compare with)."""
    out: dict[UUID, set[UUID]] = {}
    with psycopg.connect(env.dsn) as c:
        for tenant_id, call_id in c.execute("SELECT tenant_id, call_id FROM call_logs"):
            out.setdefault(tenant_id, set()).add(call_id)
    assert {t: len(ids) for t, ids in out.items()} == dict(env.counts)
    return out


def run_clients(clients: list[Callable[[], None]]) -> None:
    threads = [threading.Thread(target=c) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a client is stuck"


class Tally:
    """What every read returned, checked against the stored rows (thread-safe)."""

    def __init__(self, calls: dict[UUID, set[UUID]]) -> None:
        self.calls = calls
        self.lock = threading.Lock()
        self.reads: dict[UUID, int] = dict.fromkeys(calls, 0)
        self.errors: list[str] = []
        self.wrong: list[str] = []
        self.foreign_rows = 0

    def op(self, j: int, k: int) -> tuple[UUID, UUID, UUID]:
        """Client k's j-th read: its tenant, one of that tenant's calls, and another tenant's call."""
        tenants = sorted(self.calls)
        t = tenants[(j + k) % len(tenants)]
        other = tenants[(j + k + 1) % len(tenants)]
        return t, sorted(self.calls[t])[j % len(self.calls[t])], sorted(self.calls[other])[j]

    def check(self, t: UUID, what: str, ok: bool, foreign: int = 0) -> None:
        with self.lock:
            self.reads[t] += 1
            self.foreign_rows += foreign
            if not ok:
                self.wrong.append(f"{what} for tenant {t}")

    def error(self, who: str, exc: BaseException) -> None:
        with self.lock:
            self.errors.append(f"{who}: {type(exc).__name__}: {str(exc).strip()}")

    def reader_result(self, kind: int, t: UUID, cid: UUID, got: Any) -> None:
        want = self.calls[t]
        if kind == 0:  # count_calls
            self.check(t, f"count {got} != {len(want)}", got == len(want))
        elif kind == 1:  # recent_calls: the tenant's calls, every one, nobody else's
            ids = {c.call_id for c in got.calls}
            self.check(t, "recent_calls rows", ids == want and len(got.calls) == len(want), len(ids - want))
        elif kind == 2:  # daily_stats
            self.check(t, "daily_stats total", sum(d.calls for d in got) == len(want))
        elif kind == 3:  # get_call of its own call
            ok = got is not None and got.tenant_id == t and got.call_id == cid
            self.check(t, "get_call", ok, int(got is not None and got.tenant_id != t))
        else:  # get_call of another tenant's call id: nothing
            self.check(t, "get_call of another tenant's call", got is None, int(got is not None))


def reader_client(env: Env, url: str, tally: Tally, k: int, *, pipeline: bool) -> Callable[[], None]:
    def work() -> None:
        with psycopg.connect(url) as conn:  # psycopg's defaults, as the README shows: prepare_threshold=5
            r = Reader(conn, env.settings, pipeline=pipeline)
            for j in range(CLIENTS_OPS):
                t, cid, foreign = tally.op(j, k)
                kind, window = j % 5, {"since": env.since, "until": env.until}
                try:
                    if kind == 0:
                        got: Any = r.count_calls(t, **window)
                    elif kind == 1:
                        got = r.recent_calls(t, **window, limit=MAX_LIMIT)
                    elif kind == 2:
                        got = r.daily_stats(t, **window)
                    else:
                        got = r.get_call(t, cid if kind == 3 else foreign)
                except psycopg.Error as exc:
                    tally.error(f"reader {k} read {j}", exc)
                    continue
                tally.reader_result(kind, t, cid, got)

    return work


def async_reader_client(env: Env, url: str, tally: Tally, k: int) -> Callable[[], None]:
    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            r = AsyncReader(conn, env.settings)
            for j in range(CLIENTS_OPS):
                t, cid, foreign = tally.op(j, k)
                kind, window = j % 5, {"since": env.since, "until": env.until}
                try:
                    if kind == 0:
                        got: Any = await r.count_calls(t, **window)
                    elif kind == 1:
                        got = await r.recent_calls(t, **window, limit=MAX_LIMIT)
                    elif kind == 2:
                        got = await r.daily_stats(t, **window)
                    else:
                        got = await r.get_call(t, cid if kind == 3 else foreign)
                except psycopg.Error as exc:
                    tally.error(f"async reader {k} read {j}", exc)
                    continue
                tally.reader_result(kind, t, cid, got)

    return lambda: asyncio.run(main())


# No tenant filter in the statement: row-level security alone decides what comes back.
ALL_ROWS = "SELECT tenant_id, call_id FROM call_logs WHERE started_at >= %s AND started_at < %s"
COUNT_ROWS = "SELECT count(*) FROM call_logs WHERE started_at >= %s AND started_at < %s"


def tenant_client(env: Env, pool: ConnectionPool[Any], tally: Tally, k: int) -> Callable[[], None]:
    def work() -> None:
        for j in range(CLIENTS_OPS):
            t, _, _ = tally.op(j, k)
            try:
                with pool.connection() as conn, tenant(conn, t):
                    if j % 2:
                        rows = conn.execute(ALL_ROWS, (env.since, env.until)).fetchall()
                    else:
                        n = conn.execute(COUNT_ROWS, (env.since, env.until)).fetchone()
            except psycopg.Error as exc:
                tally.error(f"tenant() client {k} read {j}", exc)
                continue
            if j % 2:
                foreign = sum(1 for tid, _ in rows if tid != t)
                tally.check(t, "tenant() rows", {cid for _, cid in rows} == tally.calls[t] and not foreign, foreign)
            else:
                tally.check(t, f"tenant() count {n}", n == (len(tally.calls[t]),))

    return work


# -- the failure, and the rule for connections a user hands in ------------------------------------
@pytest.mark.parametrize("threshold", [5, None], ids=["psycopg-default", "prepare_threshold-None"])
def test_user_statements_need_prepare_threshold_none(env: Env, pgbouncer: PgBouncer, threshold: int | None) -> None:
    """Three clients run their own statements in tenant() blocks. With psycopg's default the 6th
    execution prepares ``_pg3_0`` on the shared server connection and the others collide with it;
    with ``prepare_threshold=None`` (what docs/tenancy.md tells users to set) nothing fails."""
    url = pgbouncer.route(env.as_("app"))
    tally = Tally(stored_calls(env))

    def client(k: int) -> Callable[[], None]:
        def work() -> None:
            with psycopg.connect(url, prepare_threshold=threshold) as conn:
                for j in range(30):
                    t, _, _ = tally.op(j, k)
                    stmt = (COUNT_ROWS, ALL_ROWS)[(j + k) % 2]  # two statements, a different order per client
                    try:
                        with tenant(conn, t):
                            rows = conn.execute(stmt, (env.since, env.until)).fetchall()
                    except psycopg.Error as exc:
                        tally.error(f"client {k} statement {j}", exc)
                        continue
                    if stmt is COUNT_ROWS:
                        tally.check(t, "count", rows == [(len(tally.calls[t]),)])
                    else:
                        foreign = sum(1 for tid, _ in rows if tid != t)
                        tally.check(t, "rows", {c for _, c in rows} == tally.calls[t] and not foreign, foreign)

        return work

    run_clients([client(k) for k in range(3)])
    assert tally.foreign_rows == 0  # row-level security still holds: the tenant itself is never prepared
    if threshold is None:
        assert tally.errors == [] and tally.wrong == []
        assert sum(tally.reads.values()) == 90
    else:
        assert tally.errors, "psycopg's default prepare_threshold no longer fails through PgBouncer"
        assert all("_pg3_" in e for e in tally.errors), tally.errors
        assert tally.wrong == []  # one server connection: a name, once there, is the statement it names


# -- (a) reads through Reader / AsyncReader / tenant() ---------------------------------------------------
def test_interleaved_reads_through_pgbouncer_never_fail_nor_leak(env: Env, pgbouncer: PgBouncer) -> None:
    """480 reads of 3 tenants by 4 concurrent clients sharing one server connection: Reader and
    AsyncReader on connections with psycopg's defaults (as the README opens them), Reader in pipeline
    mode, tenant() on a psycopg_pool pool configured as docs/tenancy.md says. Every read returns
    exactly its tenant's rows; none fails."""
    url = pgbouncer.route(env.as_("app"))
    calls = stored_calls(env)
    assert len(calls) == 3
    tally = Tally(calls)
    with ConnectionPool(url, min_size=2, max_size=2, kwargs={"prepare_threshold": None}) as pool:
        run_clients(
            [
                reader_client(env, url, tally, 0, pipeline=False),
                reader_client(env, url, tally, 1, pipeline=True),
                async_reader_client(env, url, tally, 2),
                tenant_client(env, pool, tally, 3),
            ]
        )
    assert tally.errors == []
    assert tally.wrong == []
    assert tally.foreign_rows == 0
    assert tally.reads == dict.fromkeys(calls, 4 * CLIENTS_OPS // 3)  # 160 checked reads per tenant
    pools = [p for p in pgbouncer.show("POOLS") if p["user"] == env.roles.app]
    assert pools and all(p["pool_mode"] == "transaction" for p in pools)
    servers = [s for s in pgbouncer.show("SERVERS") if s["user"] == env.roles.app]
    assert len(servers) == 1  # all 480 reads took turns on one Postgres backend


# -- (b) the tenant never reaches the next transaction on the server connection ----------------------
def test_tenant_never_reaches_the_next_transaction_on_the_server_connection(env: Env, pgbouncer: PgBouncer) -> None:
    url = pgbouncer.route(env.as_("app"))
    calls = stored_calls(env)
    t0, t1 = sorted(calls)[:2]
    probe = "SELECT pg_backend_pid(), current_setting('app.tenant_id', true), count(*) FROM call_logs"
    window = {"since": env.since, "until": env.until}
    # The clients' own statements (the probe) need prepare_threshold=None through the pooler.
    with (
        pgbouncer.explained(env.dsn),
        psycopg.connect(url, prepare_threshold=None) as a,
        psycopg.connect(url, prepare_threshold=None, autocommit=True) as b,
    ):
        for round_ in range(8):  # past psycopg's prepare threshold on both clients
            t = (t0, t1)[round_ % 2]
            with tenant(a, t):
                pid, setting, n = a.execute(probe).fetchone()  # type: ignore[misc]
            assert (setting, n) == (str(t), len(calls[t]))
            # Another client, the next transaction on that same server connection, no tenant set.
            assert b.execute(probe).fetchone() in ((pid, "", 0), (pid, None, 0))
            # The same client's next transaction.
            assert a.execute(probe).fetchone() in ((pid, "", 0), (pid, None, 0))
            a.commit()
            # After a Reader's read (pipelined or not).
            assert Reader(a, env.settings, pipeline=bool(round_ % 2)).count_calls(t, **window) == len(calls[t])
            assert b.execute(probe).fetchone() in ((pid, "", 0), (pid, None, 0))
            # A tenant() block inside a transaction the client opened: a savepoint, reset at its end.
            with a.transaction():
                with tenant(a, t):
                    assert a.execute(COUNT_ROWS, (env.since, env.until)).fetchone() == (len(calls[t]),)
                assert a.execute(probe).fetchone() == (pid, "", 0)
            assert b.execute(probe).fetchone() in ((pid, "", 0), (pid, None, 0))


# -- (c) the ingest writer through PgBouncer ------------------------------------------------------------
def test_writers_through_pgbouncer_land_every_row_exactly_once(env: Env, pgbouncer: PgBouncer) -> None:
    """Two Writers at once (small batches: many transactions each on the one shared server
    connection), then an AsyncWriter re-sending one writer's rows plus new ones."""
    ingest = env.settings.with_(dsn=pgbouncer.route(env.as_("ingest")))
    start = datetime.now(UTC) - timedelta(days=3)
    batch_a = make_calls(600, tenants=4, start=start, spacing_s=7.0, seed=101)
    batch_b = make_calls(600, tenants=4, start=start + timedelta(seconds=3), spacing_s=7.0, seed=202)
    extra = make_calls(150, tenants=4, start=start + timedelta(seconds=5), spacing_s=7.0, seed=303)
    results: dict[str, Any] = {}

    def write(name: str, rows: list[dict[str, Any]]) -> Callable[[], None]:
        def work() -> None:
            try:
                with Writer(ingest, batch_rows=25, retry_for=5) as w:
                    w.write_many(rows)
                    results[name] = w.flush()
            except Exception as exc:  # asserted below
                results[name] = exc

        return work

    run_clients([write("a", batch_a), write("b", batch_b)])

    async def resend() -> Any:
        async with AsyncWriter(ingest, batch_rows=25, retry_for=5) as w:
            for row in batch_a + extra:
                await w.write(row)
            return await w.flush()

    results["again"] = asyncio.run(resend())
    for name in ("a", "b"):
        r = results[name]
        assert not isinstance(r, BaseException), f"writer {name}: {r!r}"
        assert (r.written, r.duplicates, r.quarantined) == (600, 0, 0)
        assert r.batches >= 24
    again = results["again"]
    assert (again.written, again.duplicates, again.quarantined) == (150, 600, 0)

    sent = {(c["tenant_id"], c["call_id"]): c for c in batch_a + batch_b + extra}
    new_tenants = {c["tenant_id"] for c in sent.values()}
    with psycopg.connect(env.dsn) as c:  # the superuser, directly: every row
        rows = c.execute(
            "SELECT tenant_id, call_id, started_at, transcript, metadata FROM call_logs WHERE tenant_id = ANY(%s)",
            (list(new_tenants),),
        ).fetchall()
    assert len(rows) == len(sent) == 1350
    assert len({(r[0], r[1]) for r in rows}) == len(rows)  # exactly once
    for tenant_id, call_id, started_at, transcript, metadata in rows:
        want = sent[(tenant_id, call_id)]
        assert (started_at, transcript, metadata) == (want["started_at"], want["transcript"], want["metadata"])
