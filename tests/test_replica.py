"""``callvault dev replica up``: a streaming hot standby of an embedded cluster (pg_basebackup), and the
Reader on it, unchanged: the tenant setting is transaction-local, which a standby allows, so an
RLS-bound app role reading the standby sees its own tenant's rows only, and none without a tenant."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from callvault import bootstrap
from callvault.config import Roles, Settings
from callvault.embedded import Cluster
from callvault.query import AsyncReader, Reader
from tests.test_publish import insert
from tests.test_tenancy import PASSWORD, role_dsn

A, B = str(uuid.UUID(int=71)), str(uuid.UUID(int=72))


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Cluster, str, str, Roles]]:
    home = Path(tempfile.mkdtemp(prefix="callvault-replica-", dir="/tmp"))
    home.chmod(0o755)
    primary = Cluster(home, settings={"fsync": "off"})
    dsn = primary.up()
    roles = Roles.with_prefix("cvrep")
    with psycopg.connect(dsn, autocommit=True) as c:
        bootstrap.init(c, Settings(dsn=dsn, roles=roles), roles=True)
        for name in roles.as_dict().values():
            c.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(name), sql.Literal(PASSWORD)))
    standby = primary.replica_up()
    try:
        yield primary, dsn, standby, roles
    finally:
        primary.replica_down()
        primary.down()
        shutil.rmtree(home, ignore_errors=True)


def caught_up(primary: str, standby: str) -> None:
    with psycopg.connect(primary, autocommit=True) as p:
        lsn = p.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    with psycopg.connect(standby, autocommit=True) as s:
        deadline = time.monotonic() + 30
        while not s.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0]:
            assert time.monotonic() < deadline, "the standby did not replay within 30 s"
            time.sleep(0.1)


def test_reader_on_the_standby_sees_only_its_tenant(pair: tuple[Cluster, str, str, Roles]) -> None:
    _primary, dsn, standby, roles = pair
    with psycopg.connect(dsn, autocommit=True) as c:
        now = c.execute("SELECT statement_timestamp() - interval '2 hours'").fetchone()[0]
        insert(c, A, now, 5)
        insert(c, B, now, 3)
    caught_up(dsn, standby)
    app = role_dsn(standby, roles.app)
    with psycopg.connect(app) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        reader = Reader(conn, Settings(roles=roles))
        page = reader.recent_calls(A, since=now - timedelta(hours=1), until=now + timedelta(hours=1))
        assert len(page) == 5 and all(c.tier == "hot" for c in page)
        assert len(reader.recent_calls(B, since=now - timedelta(hours=1), until=now + timedelta(hours=1))) == 3
        # no tenant set: nothing, through the parent
        assert conn.execute("SELECT count(*) FROM call_logs").fetchone() == (0,)
        conn.rollback()
        # a partition by name: denied, as on the primary
        name = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'public.call_logs'::regclass LIMIT 1"
        ).fetchone()[0]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name)))
        conn.rollback()
        # writes are refused: it is a standby
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("SELECT set_config('app.tenant_id', %s, false)", (A,))
            conn.execute(
                "INSERT INTO call_logs (tenant_id, call_id, started_at) VALUES (%s, gen_random_uuid(), now())", (A,)
            )

    async def go() -> int:
        async with await psycopg.AsyncConnection.connect(app) as aconn:
            page = await AsyncReader(aconn, Settings(roles=roles)).recent_calls(
                A, since=now - timedelta(hours=1), until=now + timedelta(hours=1)
            )
            return len(page)

    assert asyncio.run(go()) == 5


def test_cli_dev_replica(pair: tuple[Cluster, str, str, Roles], monkeypatch: pytest.MonkeyPatch) -> None:
    primary, _dsn, standby, _roles = pair
    from tests.helpers import run, run_json

    monkeypatch.setenv("CALLVAULT_HOME", str(primary.home))
    assert run_json("dev", "replica", "url", "--json")["dsn"] == standby, "idempotent: the same standby"
    assert run_json("dev", "replica", "down", "--json") == {"stopped": True}
    assert run_json("dev", "replica", "up", "--json")["dsn"] == standby
    assert "standby" in run("dev", "replica", "up").output
