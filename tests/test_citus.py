"""The whole lifecycle on both engines: single-node PostgreSQL and a local Citus cluster (a coordinator
and two workers; tests/conftest.py runs this module's tests once per engine).

init (distributed by tenant_id on Citus), 50k calls for 20 tenants through the Writer as the ingest
role, each tenant's 7-day window through the Reader as the RLS-bound app role, explain (one Citus task,
pruned weeks), maintain (new partitions distributed), archive of a past week and restore, audit.
Every time is derived from the server's clock and the partition bounds.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from callvault import citus
from callvault.config import Roles, Settings
from callvault.db import connect, server_now
from callvault.engines import citus_available
from callvault.ingest import Writer
from callvault.monitor import collect
from callvault.query import Reader
from tests.helpers import make_calls, new_dir, run, run_json

PASSWORD = "citus-test-pw"
_counter = itertools.count()


def role_dsn(dsn: str, role: str) -> str:
    u = urlsplit(dsn)
    return urlunsplit(u._replace(netloc=f"{quote(role, safe='')}:{PASSWORD}@{u.hostname}:{u.port}"))


def drop_roles(dsn: str, roles: Roles) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        for name in roles.as_dict().values():
            if c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
                c.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
                c.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@pytest.fixture
def roles(dsn: str) -> Any:
    r = Roles.with_prefix(f"cvc{os.getpid()}_{next(_counter)}")
    yield r
    drop_roles(dsn, r)


def distributed_partitions(conn: psycopg.Connection[Any]) -> set[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_dist_partition d JOIN pg_class c ON c.oid = d.logicalrelid "
        "WHERE c.relname LIKE 'call_logs_p%'"
    ).fetchall()
    return {str(r[0]) for r in rows}


def test_lifecycle_on_the_engine(dsn: str, engine: str, roles: Roles, tmp_path: Path) -> None:
    flags = ["--distributed"] if engine == "citus" else []
    init = run_json("init", "--dsn", dsn, "--roles", "--role-prefix", roles.owner.removesuffix("_owner"), *flags)
    assert any(step.startswith("distribute") for step in init["steps"]) == (engine == "citus")
    s = Settings(dsn=dsn, roles=roles)
    with psycopg.connect(dsn, autocommit=True) as c:
        for name in roles.as_dict().values():
            c.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(name), sql.Literal(PASSWORD)))
        now = server_now(c)
        assert citus.is_distributed(c, s) == (engine == "citus")
    with connect(s) as conn:
        st = collect(conn, s)
    oldest = min((p for p in st.ranged), key=lambda p: p.start or now)
    assert oldest.start is not None and oldest.end is not None

    # 50k calls for 20 tenants over the last 7 days, plus some in the oldest week (to archive)
    recent = make_calls(50_000, tenants=20, start=now - timedelta(days=7) + timedelta(minutes=1), spacing_s=12)
    old = make_calls(2_000, tenants=20, start=oldest.start + timedelta(hours=1), spacing_s=60, seed=3)
    with Writer(s.with_(dsn=role_dsn(dsn, roles.ingest))) as w:
        w.write_many(recent + old)
    assert w.stats.written == 52_000 and w.stats.quarantined == 0

    # each tenant's window, as the RLS-bound app role: exactly its rows
    want: dict[str, set[str]] = {}
    for c in recent:
        want.setdefault(str(c["tenant_id"]), set()).add(str(c["call_id"]))
    with psycopg.connect(role_dsn(dsn, roles.app)) as app:
        reader = Reader(app, s)
        for tenant, ids in want.items():
            page = reader.recent_calls(tenant, since=now - timedelta(days=7), until=now + timedelta(hours=1),
                                       limit=10_000)  # fmt: skip
            assert {str(x.call_id) for x in page.calls} == ids, tenant
            assert reader.count_calls(tenant, since=now - timedelta(days=7), until=now + timedelta(hours=1)) == len(ids)
        assert app.execute("SELECT count(*) FROM call_logs").fetchone() == (0,)  # no tenant: nothing
        app.rollback()

    # explain: one task on Citus, weeks pruned
    tenant = next(iter(want))
    window = "SELECT * FROM call_logs WHERE tenant_id = $1 AND started_at >= $2 AND started_at < $3"
    rep = run_json("explain", "--dsn", dsn, window, "-p", tenant, "-p", (now - timedelta(days=7)).isoformat(),
                   "-p", now.isoformat())  # fmt: skip
    assert rep["ok"] and rep["partitions_scanned"] <= 3 < rep["partitions_total"]
    assert rep["tasks"] == (1 if engine == "citus" else None)

    # archive the oldest week (and only it), then restore it
    store = new_dir(tmp_path / "store").as_uri()
    at = oldest.end + timedelta(days=90, hours=12)
    arch = run_json("archive", "--dsn", dsn, "--to", store, "--at", at.isoformat())
    done = [p for p in arch["partitions"] if p["step_after"] == "dropped" and not p["error"]]
    assert [p["partition"] for p in done] == [oldest.name] and done[0]["rows"] == 2_000
    with psycopg.connect(dsn, autocommit=True) as c:
        assert c.execute("SELECT count(*) FROM call_logs").fetchone() == (50_000,)
    back = run_json("restore", "--dsn", dsn, "--to", store, "--week", oldest.start.date().isoformat())
    assert back["inserted"] == 2_000
    with psycopg.connect(dsn, autocommit=True) as c:
        per_tenant = Counter(
            str(r[0]) for r in c.execute("SELECT tenant_id FROM call_logs WHERE started_at < %s", (oldest.end,))
        )
        assert per_tenant == Counter(str(c_["tenant_id"]) for c_ in old)
        if engine == "citus":
            assert oldest.name in distributed_partitions(c)

    # maintain: the partitions it creates are distributed
    made = run_json("maintain", "--dsn", dsn, "--at", (now + timedelta(weeks=4)).isoformat())
    assert made["created"]
    if engine == "citus":
        with psycopg.connect(dsn, autocommit=True) as c:
            assert set(made["created"]) <= distributed_partitions(c)

    # tenant isolation holds on every partition and shard's parent
    assert run("audit", "--dsn", dsn, "--role-prefix", roles.owner.removesuffix("_owner")).exit_code == 0


def test_refusals_on_citus(dsn: str, engine: str) -> None:
    """What cannot work on Citus says why; on PostgreSQL the same commands go on."""
    run("init", "--dsn", dsn)
    r = run("publish", "--dsn", dsn, "--sql", ok=False)
    if engine == "citus":
        assert r.exit_code == 2 and "change data capture" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    else:
        assert r.exit_code == 0


def test_init_distributed_preflight(dsn: str, engine: str) -> None:
    r = run("init", "--dsn", dsn, "--distributed", "--shard-count", "0", ok=False)
    assert r.exit_code == 2 and "--shard-count" in r.stderr
    if engine == "postgres":
        r = run("init", "--dsn", dsn, "--distributed", ok=False)
        # Citus installed for the server but not preloaded by this cluster, or not installed at all
        missing = "shared_preload_libraries" if citus_available() else "Citus extension is not installed"
        assert r.exit_code == 69 and missing in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    else:
        run("init", "--dsn", dsn, "--no-distributed")
        with psycopg.connect(dsn, autocommit=True) as c:
            assert not citus.is_distributed(c, Settings(dsn=dsn))
        r = run("init", "--dsn", dsn, "--distributed", ok=False)
        assert r.exit_code == 2 and "local table" in r.stderr
