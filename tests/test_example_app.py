"""The example service (examples/voice_platform) on the embedded cluster, as a platform would run it.

The four roles of ``init --roles`` get passwords; the service's writer connects as the ingest role, its
read pool as the row-level-security-bound app role, ``/healthz`` and the nightly job as the owner. The
app runs with its real lifespan, requests go through httpx's ASGI transport.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from callvault import bootstrap, catalog
from callvault.config import Roles, Settings
from callvault.errors import WriterError
from callvault.query import AsyncReader
from callvault.tenancy import atenant
from examples.voice_platform import nightly
from examples.voice_platform.app import Service, create_app
from examples.voice_platform.config import Config, ConfigError, Tokens
from tests.helpers import new_dir
from tests.test_archive import AT, TENANTS, expected_archive, fill
from tests.test_tenancy import drop_roles, role_dsn

_counter = itertools.count()
A, B = str(uuid.uuid4()), str(uuid.uuid4())
TOKEN_A, TOKEN_B = "token-of-tenant-a-0123456789", "token-of-tenant-b-0123456789"


@dataclass
class Db:
    dsn: str  # the superuser: set-up and checks only
    roles: Roles

    def as_(self, kind: str) -> str:
        return role_dsn(self.dsn, getattr(self.roles, kind))

    @property
    def settings(self) -> Settings:
        return Settings(dsn=self.dsn, roles=self.roles)

    def config(self, **changes: Any) -> Config:
        fields: dict[str, Any] = {
            "ingest_dsn": self.as_("ingest"), "app_dsn": self.as_("app"), "owner_dsn": self.as_("owner"),
            "tokens": Tokens({TOKEN_A: A, TOKEN_B: B}), "settings": Settings(roles=self.roles),
        }  # fmt: skip
        return Config(**(fields | changes))


@pytest.fixture
def db(dsn: str) -> Iterator[Db]:
    """``init --roles`` with roles of its own (roles are cluster-wide) and a password for each."""
    roles = Roles.with_prefix(f"cvx{os.getpid()}_{next(_counter)}")
    with psycopg.connect(dsn, autocommit=True) as c:
        bootstrap.init(c, Settings(dsn=dsn, roles=roles), roles=True)
        for name in roles.as_dict().values():
            c.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(name), sql.Literal("tenancy-test")))
    yield Db(dsn, roles)
    drop_roles(dsn, roles)


def call_times(db: Db, n: int) -> list[datetime]:
    """n distinct times, oldest first, inside the partition that holds the server's now and before now:
    derived from the catalog's bounds, so a week boundary a minute ago changes nothing."""
    with psycopg.connect(db.dsn) as c:
        bounds = catalog.partition_bounds(c, db.settings)
        now = c.execute("SELECT statement_timestamp()").fetchone()[0]  # type: ignore[index]
    lo = max(start for start, end in bounds if start <= now < end)
    step = min(now - lo, timedelta(hours=1)) / (n + 1)
    return [now - step * (n - i) for i in range(n)]


def body(call_id: str, started: datetime, **extra: Any) -> dict[str, Any]:
    ended = started + timedelta(seconds=42)
    return {
        "call_id": call_id, "started_at": started.isoformat(), "ended_at": ended.isoformat(),
        "transcript": f"caller {call_id[:8]}: I'd like to move my appointment", "metadata": {"agent": "a1"}, **extra,
    }  # fmt: skip


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- the service ----------------------------------------------------------------------------------------
def test_two_tenants_write_read_page_and_stay_apart(db: Db) -> None:
    times = call_times(db, 9)
    a_ids = [str(uuid.uuid4()) for _ in range(6)]
    b_ids = [str(uuid.uuid4()) for _ in range(3)]
    a_times = dict(zip(a_ids, times[:6], strict=True))
    b_times = dict(zip(b_ids, times[6:], strict=True))
    since, until = (times[0] - timedelta(seconds=1)).isoformat(), (times[-1] + timedelta(minutes=5)).isoformat()
    window = {"since": since, "until": until}

    async def scenario() -> None:
        app = create_app(db.config())
        async with app.router.lifespan_context(app):
            svc: Service = app.state.service
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://voice.test") as http:
                # no token, an unknown token
                first = body(a_ids[0], a_times[a_ids[0]])
                assert (await http.post("/calls", json=first)).status_code == 401
                r = await http.post("/calls", json=first, headers=auth("nope"))
                assert r.status_code == 401 and "Bearer" in r.json()["detail"]
                assert r.headers["www-authenticate"] == "Bearer"

                # writes: the tenant is the token's; a body naming the caller's own tenant is fine
                for cid in a_ids[:4]:
                    r = await http.post("/calls", json=body(cid, a_times[cid]), headers=auth(TOKEN_A))
                    assert r.status_code == 202, r.text
                    assert r.json()["status"] == "accepted" and r.json()["tenant_id"] == A
                r = await http.post(
                    "/calls", json=body(a_ids[4], a_times[a_ids[4]], tenant_id=A), headers=auth(TOKEN_A)
                )
                assert r.status_code == 202, r.text
                for cid in b_ids:
                    r = await http.post("/calls", json=body(cid, b_times[cid]), headers=auth(TOKEN_B))
                    assert r.status_code == 202, r.text

                # a body for another tenant is refused, whatever else it holds
                r = await http.post(
                    "/calls", json=body(str(uuid.uuid4()), times[0], tenant_id=B), headers=auth(TOKEN_A)
                )
                assert r.status_code == 403
                assert f"tenant_id {B} in the body is not your tenant ({A})" in r.json()["detail"]

                # bad bodies: pydantic's shape checks, then callvault's own rules, each 422 with the reason
                bad_id = await http.post("/calls", json=body("not-a-uuid", times[0]), headers=auth(TOKEN_A))
                assert bad_id.status_code == 422 and "call_id" in bad_id.text and "UUID" in bad_id.text
                naive = body(str(uuid.uuid4()), times[0]) | {"started_at": "2026-05-04T12:00:00"}
                r = await http.post("/calls", json=naive, headers=auth(TOKEN_A))
                assert r.status_code == 422 and "timezone" in r.text
                nul = body(str(uuid.uuid4()), times[0]) | {"transcript": "hello \u0000 there"}
                r = await http.post("/calls", json=nul, headers=auth(TOKEN_A))
                assert r.status_code == 422 and "NUL" in r.json()["detail"]
                backwards = body(str(uuid.uuid4()), times[1]) | {"ended_at": times[0].isoformat()}
                r = await http.post("/calls", json=backwards, headers=auth(TOKEN_A))
                assert r.status_code == 422 and "ended_at" in r.json()["detail"]
                typo = body(str(uuid.uuid4()), times[0]) | {"transcrpit": "x"}
                assert (await http.post("/calls", json=typo, headers=auth(TOKEN_A))).status_code == 422

                # ?wait=true answers once committed; everything posted before it is committed too
                r = await http.post(
                    "/calls", params={"wait": "true"}, json=body(a_ids[5], a_times[a_ids[5]]), headers=auth(TOKEN_A)
                )
                assert r.status_code == 201 and r.json()["status"] == "stored"
                assert svc.writer.stats.written == 9 and svc.writer.stats.quarantined == 0
                # a call in 2029 validates but has no partition: ?wait=true says quarantined (202), not stored
                future = body(str(uuid.uuid4()), times[0]) | {"started_at": "2029-06-01T12:00:00Z",
                                                                "ended_at": "2029-06-01T12:01:00Z"}  # fmt: skip
                r = await http.post("/calls", params={"wait": "true"}, json=future, headers=auth(TOKEN_A))
                assert r.status_code == 202, r.text
                assert r.json()["status"] == "quarantined" and r.json()["reason"], r.text
                assert svc.writer.stats.quarantined == 1

                # reads: A's calls, newest first, two pages of 4 and 2
                pages, cursor = [], None
                while True:
                    params = window | {"limit": 4} | ({"cursor": cursor} if cursor else {})
                    r = await http.get(f"/tenants/{A}/calls", params=params, headers=auth(TOKEN_A))
                    assert r.status_code == 200, r.text
                    pages.append(r.json()["calls"])
                    cursor = r.json()["next_cursor"]
                    if cursor is None:
                        break
                assert [len(p) for p in pages] == [4, 2]
                listed = [c["call_id"] for p in pages for c in p]
                assert listed == sorted(a_ids, key=lambda c: a_times[c], reverse=True)
                r = await http.get(f"/tenants/{B}/calls", params=window, headers=auth(TOKEN_B))
                assert {c["call_id"] for c in r.json()["calls"]} == set(b_ids)

                # one call, with and without started_at
                r = await http.get(f"/tenants/{A}/calls/{a_ids[2]}", headers=auth(TOKEN_A))
                assert r.status_code == 200, r.text
                got = r.json()
                assert (got["tenant_id"], got["call_id"], got["metadata"]) == (A, a_ids[2], {"agent": "a1"})
                assert got["transcript"].startswith(f"caller {a_ids[2][:8]}")
                pinned = {"started_at": a_times[a_ids[2]].isoformat()}
                r = await http.get(f"/tenants/{A}/calls/{a_ids[2]}", params=pinned, headers=auth(TOKEN_A))
                assert r.json() == got

                # A cannot reach B: another tenant's path is 403; B's call under A's path is not found
                for path in (f"/tenants/{B}/calls", f"/tenants/{B}/calls/{b_ids[0]}"):
                    r = await http.get(path, params=window, headers=auth(TOKEN_A))
                    assert r.status_code == 403 and f"tenant {B} is not yours" in r.json()["detail"]
                r = await http.get(f"/tenants/{A}/calls/{b_ids[0]}", headers=auth(TOKEN_A))
                assert r.status_code == 404 and f"no call {b_ids[0]}" in r.json()["detail"]
                assert (await http.get(f"/tenants/{A}/calls", params=window)).status_code == 401

                # bad ids, windows, cursors and limits: 400 with callvault's own message
                async def refused(path: str, params: dict[str, Any], says: str, code: int = 400) -> None:
                    r = await http.get(path, params=params, headers=auth(TOKEN_A))
                    assert r.status_code == code, r.text
                    assert says in r.text, r.text

                await refused(f"/tenants/{A}/calls/not-a-uuid", {}, "call id 'not-a-uuid' is not a UUID")
                await refused("/tenants/not-a-uuid/calls", window, "tenant id 'not-a-uuid' is not a UUID")
                await refused(f"/tenants/{A}/calls", {}, "an unbounded window would scan every partition")
                await refused(f"/tenants/{A}/calls", {"since": "2020-01-01T00:00:00Z"}, "wider than")
                await refused(f"/tenants/{A}/calls", {"since": "2026-01-01T00:00:00"}, "must be a timezone-aware")
                await refused(f"/tenants/{A}/calls", window | {"cursor": "garbage"}, "is not one callvault returned")
                await refused(f"/tenants/{A}/calls", window | {"limit": 0}, "limit=0 must be between 1 and")
                await refused(f"/tenants/{A}/calls", {"since": "yesterday"}, "datetime", code=422)

                r = await http.get("/healthz")
                assert r.status_code == 200, r.text
                health = r.json()
                assert (health["status"], health["database"]) == ("ok", "ok")
                assert health["callvault"]["table"] == "public.call_logs" and "problems" in health["callvault"]

        # the policy itself, not the service's checks: the app role with A's tenant sees no row of B
        lo, hi = datetime.fromisoformat(since), datetime.fromisoformat(until)
        async with await psycopg.AsyncConnection.connect(db.as_("app")) as conn:
            reader = AsyncReader(conn, Settings(roles=db.roles))
            assert {str(c.call_id) for c in await reader.recent_calls(A, since=lo, until=hi)} == set(a_ids)
            assert await reader.get_call(A, b_ids[0]) is None
            async with atenant(conn, A):  # no tenant filter in the statement at all
                cur = await conn.execute(
                    "SELECT tenant_id::text, count(*) FROM call_logs WHERE started_at >= %s AND started_at < %s "
                    "GROUP BY 1",
                    (lo, hi),
                )
                assert await cur.fetchall() == [(A, 6)]
            async with atenant(conn, A):
                cur = await conn.execute("SELECT count(*) FROM call_logs WHERE tenant_id = %s", (B,))
                assert await cur.fetchone() == (0,)
            cur = await conn.execute("SELECT count(*) FROM call_logs")  # no tenant set: nothing
            assert await cur.fetchone() == (0,)

    asyncio.run(scenario())
    with psycopg.connect(db.dsn) as c:  # what landed, seen by the superuser
        rows = c.execute("SELECT tenant_id::text, call_id::text FROM call_logs").fetchall()
    assert sorted(rows) == sorted([(A, c) for c in a_ids] + [(B, c) for c in b_ids])


def test_refuses_to_start_with_the_wrong_roles(db: Db) -> None:
    async def start(config: Config) -> None:
        app = create_app(config)
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(RuntimeError, match="bypasses row-level security"):
        asyncio.run(start(db.config(app_dsn=db.as_("owner"))))
    with pytest.raises(WriterError, match="subject to row-level security"):
        asyncio.run(start(db.config(ingest_dsn=db.as_("app"))))


def test_config_from_the_environment(tmp_path: Path) -> None:
    env = {"VOICE_INGEST_DSN": "postgresql://i@db/calls", "VOICE_APP_DSN": "postgresql://a@db/calls",
           "VOICE_TOKENS": json.dumps({TOKEN_A: A.upper()}), "CALLVAULT_TABLE": "calls"}  # fmt: skip
    config = Config.from_env(env)
    assert config.tokens.tenant_for(TOKEN_A) == A and config.tokens.tenant_for(TOKEN_A[:-1]) is None
    assert (config.settings.qualified, config.settings.dsn, config.owner_dsn) == ("public.calls", None, None)
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({TOKEN_B: B}))
    from_file = Config.from_env(
        {k: v for k, v in env.items() if k != "VOICE_TOKENS"} | {"VOICE_TOKENS_FILE": str(tokens)}
    )
    assert from_file.tokens.tenant_for(TOKEN_B) == B
    for broken, says in [
        ({"VOICE_APP_DSN": ""}, "VOICE_APP_DSN is not set"),
        ({"VOICE_TOKENS": "{}"}, "non-empty JSON object"),
        ({"VOICE_TOKENS": "[1"}, "VOICE_TOKENS is not JSON"),
        ({"VOICE_TOKENS": json.dumps({"t": "tenant-a"})}, "tenant id 'tenant-a' is not a UUID"),
        ({"VOICE_TOKENS_FILE": str(tmp_path / "missing.json")}, "missing.json"),
    ]:
        with pytest.raises(ConfigError, match=says):
            Config.from_env(env | broken)


# -- the nightly job --------------------------------------------------------------------------------------
def test_nightly_archives_queries_and_restores_a_week(db: Db, conn: psycopg.Connection, tmp_path: Path) -> None:
    fill(conn)  # every partition that has begun, derived from the catalog's bounds
    expected = expected_archive(conn, db.settings)  # what is past retention at AT, per tenant
    assert expected and all(len(t) == len(TENANTS) for t in expected.values())
    rows_of = {name: sum(int(str(e["md5"][0])) for e in tenants.values()) for name, tenants in expected.items()}
    store = new_dir(tmp_path / "archive").as_uri()
    owner = ["--dsn", db.as_("owner"), "--to", store, "--at", AT]

    def exists(name: str) -> bool:
        return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{name}",)).fetchone() == (True,)

    out = StringIO()
    assert nightly.main([*owner, "--dry-run"], out=out) == 0, out.getvalue()
    text = out.getvalue()
    assert all(f"{name}  [" in text for name in expected) and "would be archived" in text, text
    assert "nothing archived yet" in text and "nothing to restore" in text and text.rstrip().endswith("ok")
    assert all(exists(name) for name in expected), "a dry run changes nothing"

    out = StringIO()
    assert nightly.main([*owner, "--keep", "--json"], out=out) == 0, out.getvalue()
    report = json.loads(out.getvalue())
    archived = {p["partition"]: p for p in report["archive"]["partitions"]}
    assert set(archived) == set(expected)
    assert all(p["step_after"] == "dropped" and p["rows"] == rows_of[n] for n, p in archived.items())
    assert not any(exists(name) for name in expected)
    # DuckDB over the store counts each archived week as its manifest does, and as Postgres did before
    week_of = {n: p["from"][:10] for n, p in archived.items()}
    newest = max(expected, key=lambda n: week_of[n])
    counted = {q["period"]: (q["calls"], q["tenants"], q["ok"]) for q in report["archive_query"]}
    assert counted == {week_of[n]: (rows_of[n], len(TENANTS), True) for n in expected if week_of[n] in counted}
    assert week_of[newest] in counted and len(counted) == min(len(expected), nightly.DEFAULT_REPORT_WEEKS)
    # the drill restored the newest archived week into a side table, verified, and kept it (--keep)
    restore = report["restore"]
    assert (restore["week"], restore["into"], restore["side_table_dropped"]) == (
        week_of[newest], "call_logs_restore_drill", False)  # fmt: skip
    assert restore["report"]["rows"] == rows_of[newest]
    side = dict(conn.execute("SELECT tenant_id::text, count(*) FROM call_logs_restore_drill GROUP BY 1").fetchall())
    assert side == {t: int(str(e["md5"][0])) for t, e in expected[newest].items()}

    # the next night: nothing left to archive; a fresh drill table is dropped once verified
    out = StringIO()
    assert nightly.main([*owner, "--restore-into", "drill_b"], out=out) == 0, out.getvalue()
    text = out.getvalue()
    assert "nothing past retention" in text
    assert f"{week_of[newest]} -> public.drill_b: {rows_of[newest]:,} rows of {len(TENANTS)} tenants verified" in text
    assert "public.drill_b dropped" in text and not exists("drill_b")
    assert exists("call_logs_restore_drill"), "a table that existed before the run is never dropped"


def test_nightly_names_what_is_wrong(db: Db, tmp_path: Path) -> None:
    out = StringIO()  # the app role may read rows, not archive them
    code = nightly.main(["--dsn", db.as_("app"), "--to", new_dir(tmp_path / "a").as_uri(), "--no-restore"], out=out)
    assert code == 77, out.getvalue()
    assert "ERROR in archive: permission denied" in out.getvalue() and "owner role" in out.getvalue()
    assert out.getvalue().rstrip().endswith("failed (exit 77)")
