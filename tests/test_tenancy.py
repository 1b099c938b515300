"""Tenant isolation on a real cluster, with the roles an application would use.

Every test gets its own database and its own four roles (a unique prefix: roles are cluster-wide),
made by ``init --roles``; it connects as those roles with passwords set here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit
from uuid import UUID

import psycopg
import pytest
from psycopg import errors as pgerr
from psycopg import sql
from psycopg_pool import ConnectionPool

from callvault import bootstrap, catalog, tenancy
from callvault.config import Roles, Settings
from callvault.errors import InvalidSetting, WriterError
from callvault.ingest.writer import Writer
from callvault.query import AsyncReader, Reader
from callvault.tenancy import TenantWriter, atenant, tenant
from callvault.tenancy.facts import read_facts
from tests.helpers import make_calls, new_dir, run

PASSWORD = "tenancy-test"
_counter = itertools.count()


def role_dsn(dsn: str, role: str) -> str:
    u = urlsplit(dsn)
    return urlunsplit(u._replace(netloc=f"{quote(role, safe='')}:{PASSWORD}@{u.hostname}:{u.port}"))


@dataclass
class Env:
    dsn: str
    settings: Settings
    roles: Roles
    counts: Counter[UUID]  # rows per tenant
    since: datetime
    until: datetime

    def as_(self, kind: str) -> str:
        return role_dsn(self.dsn, getattr(self.roles, kind))

    @property
    def tenants(self) -> list[UUID]:
        return sorted(self.counts)


def make_env(dsn: str, prefix: str, settings: Settings | None = None) -> Env:
    roles = Roles.with_prefix(prefix)
    s = (settings or Settings(dsn=dsn)).with_(roles=roles)
    with psycopg.connect(dsn, autocommit=True) as c:
        bootstrap.init(c, s, roles=True)
        for name in roles.as_dict().values():
            c.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(name), sql.Literal(PASSWORD)))
    now = datetime.now(UTC)
    start = now - timedelta(days=60)
    calls = make_calls(900, tenants=3, start=start, spacing_s=5400)
    calls += [dict(c, call_id=UUID(int=i + 1, version=4)) for i, c in enumerate(calls[:60:3])]  # tenant 0: +20
    with Writer(s.with_(dsn=role_dsn(dsn, roles.ingest))) as w:  # the trusted ingest role, COPY
        w.write_many(calls)
    return Env(
        dsn, s, roles, Counter(c["tenant_id"] for c in calls), start - timedelta(days=1), now + timedelta(days=1)
    )


def drop_roles(dsn: str, roles: Roles) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        for name in roles.as_dict().values():
            if c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
                me = c.execute("SELECT current_user").fetchone()[0]  # by name: Citus 13.2 crashes on CURRENT_USER
                c.execute(sql.SQL("REASSIGN OWNED BY {} TO {}").format(sql.Identifier(name), sql.Identifier(me)))
                c.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
                c.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@pytest.fixture
def env(dsn: str) -> Iterator[Env]:
    e = make_env(dsn, f"cvt{os.getpid()}_{next(_counter)}")
    yield e
    drop_roles(dsn, e.roles)


def assert_isolated(env: Env) -> None:
    """Every partition (and detached table) has forced RLS, callvault's policy unchanged, no grants."""
    with psycopg.connect(env.dsn) as c:
        facts = read_facts(c, env.settings)
    assert facts.children
    bad = [(r.name, r.rls, r.force, r.has_policy, r.grantees) for r in facts.children if not r.isolated or r.grantees]
    assert bad == []


def children(env: Env) -> list[str]:
    with psycopg.connect(env.dsn) as c:
        attached, detached = catalog.partition_names(c, env.settings)
    return sorted(attached | detached)


def tenant_rows(conn: psycopg.Connection[Any], env: Env, rel: str | None = None) -> list[UUID]:
    target = sql.Identifier(env.settings.schema, rel or env.settings.table)
    return [r[0] for r in conn.execute(sql.SQL("SELECT tenant_id FROM {}").format(target)).fetchall()]


def audit_cli(env: Env, *extra: str, ok: bool = True) -> Any:
    return run("audit", "--dsn", env.dsn, "--role-prefix", env.roles.app.removesuffix("_app"), *extra, ok=ok)


# -- the checks, through the CLI ---------------------------------------------------------------
def test_init_roles_then_audit_holds_across_maintain_and_flags_a_hand_grant(env: Env) -> None:
    prefix = env.roles.app.removesuffix("_app")
    assert "nothing to do" in run("init", "--dsn", env.dsn, "--roles", "--role-prefix", prefix).stdout
    assert audit_cli(env).exit_code == 0

    before = set(children(env))
    future = (datetime.now(UTC) + timedelta(weeks=8)).isoformat()
    out = run("maintain", "--dsn", env.dsn, "--at", future).stdout
    created = set(children(env)) - before
    assert created and "secured" in out
    result = audit_cli(env)
    assert "ok (" in result.stdout

    victim = sorted(created)[0]
    with psycopg.connect(env.dsn, autocommit=True) as c:
        c.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(victim), sql.Identifier(env.roles.app)))
    bad = audit_cli(env, ok=False)
    assert bad.exit_code == 3
    assert victim in bad.stdout and env.roles.app in bad.stdout
    assert victim in bad.stderr

    fixed = audit_cli(env, "--fix")
    assert f"{victim}: revoke all from {env.roles.app}" in fixed.stdout
    assert audit_cli(env).exit_code == 0


def test_audit_names_every_kind_of_gap(env: Env) -> None:
    parts = children(env)
    with psycopg.connect(env.dsn, autocommit=True) as c:
        c.execute(sql.SQL("ALTER TABLE {} NO FORCE ROW LEVEL SECURITY").format(sql.Identifier(parts[0])))
        c.execute(sql.SQL("DROP POLICY {} ON {}").format(sql.Identifier(tenancy.POLICY_NAME), sql.Identifier(parts[1])))
        c.execute("CREATE POLICY see_all ON call_logs USING (true)")
        c.execute(sql.SQL("GRANT SELECT (transcript) ON {} TO PUBLIC").format(sql.Identifier(parts[2])))
        c.execute(sql.SQL("ALTER ROLE {} BYPASSRLS").format(sql.Identifier(env.roles.app)))
        c.execute(sql.SQL("GRANT SELECT ON call_logs TO {}").format(sql.Identifier(env.roles.ingest)))
        report = tenancy.audit(c, env.settings)
    text = "\n".join(f"{f.severity} {f.problem}" for f in report.findings)
    assert "leak permissive policy 'see_all'" in text
    assert f"application role {env.roles.app} has BYPASSRLS" in text
    assert f"{env.roles.ingest} can read partition {parts[2]}" in text  # BYPASSRLS + a PUBLIC column grant
    assert f"{env.roles.ingest} can SELECT transcripts of call_logs" in text
    assert f"PUBLIC holds privileges on partition {parts[2]}" in text
    assert f"not forced on partition {parts[0]}" in text  # a warning: nobody else can open it
    assert f"partition {parts[1]} lacks the unchanged policy" in text
    # maintain repairs what is callvault's to repair; role attributes and extra policies are reported only
    with psycopg.connect(env.dsn, autocommit=True) as c:
        report = tenancy.audit(c, env.settings, fix=True)
    left = {f.problem.split(":")[0] for f in report.failed}
    assert any("see_all" in p for p in left) and any("BYPASSRLS" in p for p in left)
    assert not any(parts[0] in p or parts[1] in p or parts[2] in p for p in left)


# -- reads ---------------------------------------------------------------------------------------------
def test_app_role_reads_only_its_tenant_through_parent_and_every_child(env: Env) -> None:
    a, b, _ = env.tenants
    before = set(children(env))  # and partitions created by maintain after init (none detached yet)
    run("maintain", "--dsn", env.as_("owner"), "--at", (datetime.now(UTC) + timedelta(weeks=2)).isoformat())
    assert set(children(env)) > before
    assert_isolated(env)
    with psycopg.connect(env.as_("app")) as app:
        for t in (a, b):
            with tenant(app, t):
                rows = tenant_rows(app, env)
            assert len(rows) == env.counts[t] and set(rows) == {t}
        names = children(env)
        assert len(names) > 15
        for name in names:
            with pytest.raises(pgerr.InsufficientPrivilege), tenant(app, a):
                tenant_rows(app, env, name)
        reader = Reader(app, env.settings)
        page = reader.recent_calls(a, since=env.since, until=env.until, limit=10_000)
        assert len(page.calls) == env.counts[a]
        assert reader.count_calls(b, since=env.since, until=env.until) == env.counts[b]


def test_a_grant_on_a_child_still_shows_one_tenant_only(env: Env) -> None:
    """Defence in depth: even with a hand-made grant, each partition's own policy filters."""
    a = env.tenants[0]
    mixed = sql.SQL("SELECT count(DISTINCT tenant_id) > 1 FROM {}")
    with psycopg.connect(env.dsn, autocommit=True) as c:
        names = [n for n in children(env) if c.execute(mixed.format(sql.Identifier(n))).fetchone() == (True,)]
        for n in names:
            c.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(n), sql.Identifier(env.roles.app)))
    assert names
    with psycopg.connect(env.as_("app")) as app:
        for n in names:
            with tenant(app, a):
                assert set(tenant_rows(app, env, n)) == {a}
            assert tenant_rows(app, env, n) == []  # no tenant: nothing
            app.commit()


def test_restored_and_default_partitions_get_the_policy(dsn: str, tmp_path: Path) -> None:
    e = make_env(dsn, f"cvt{os.getpid()}_{next(_counter)}", Settings(dsn=dsn, default_partition=True))
    try:
        store = new_dir(tmp_path / "archive").as_uri()
        later = (datetime.now(UTC) + timedelta(days=75)).isoformat()
        with psycopg.connect(dsn) as c:
            before, _ = catalog.partition_names(c, e.settings)
        owner = e.as_("owner")  # the role operations run as
        run("archive", "--dsn", owner, "--to", store, "--at", later)
        week = (datetime.now(UTC) - timedelta(days=58)).date().isoformat()
        restored = run("restore", "--dsn", owner, "--to", store, "--week", week, "--json").stdout
        assert '"attached_partition": true' in restored
        assert_isolated(e)  # restore secured the week it attached, in the attaching transaction
        run("restore", "--dsn", owner, "--to", store, "--week", week, "--into", "investigation")
        with psycopg.connect(dsn) as c:
            attached, _ = catalog.partition_names(c, e.settings)
            facts = tenancy.audit(c, e.settings)
        assert len(attached) < len(before)  # weeks were archived and dropped, one came back
        assert "call_logs_default" in attached
        assert facts.findings == []
        with psycopg.connect(dsn) as c:  # the side table got the same treatment, and stays audited
            side = read_facts(c, e.settings).children
        assert [(r.isolated, r.grantees, r.owner) for r in side if r.kind == "side"] == [(True, (), e.roles.owner)]
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("ALTER TABLE investigation DISABLE ROW LEVEL SECURITY")
            c.execute(sql.SQL("GRANT SELECT ON investigation TO {}").format(sql.Identifier(e.roles.app)))
        bad = run("audit", "--dsn", dsn, "--role-prefix", e.roles.app.removesuffix("_app"), ok=False)
        assert bad.exit_code == 3 and "investigation" in bad.stdout
        run("maintain", "--dsn", dsn)  # repairs it like a partition
        assert audit_cli(e).exit_code == 0
        a = e.tenants[0]
        with psycopg.connect(e.as_("app")) as app:
            for name in sorted(attached):
                with pytest.raises(pgerr.InsufficientPrivilege), tenant(app, a):
                    tenant_rows(app, e, name)
            with tenant(app, a):
                rows = tenant_rows(app, e)
            assert rows and set(rows) == {a}
    finally:
        drop_roles(dsn, e.roles)


@pytest.mark.parametrize("value", [None, "", "   ", "not-a-uuid", "00000000-0000-0000-0000-00000000000g"])
def test_unset_empty_or_malformed_tenant_never_reads_all(env: Env, value: str | None) -> None:
    with psycopg.connect(env.as_("app")) as app:
        try:
            with app.transaction():
                if value is not None:
                    app.execute("SELECT set_config('app.tenant_id', %s, true)", (value,))
                rows = tenant_rows(app, env)
        except pgerr.InvalidTextRepresentation:
            rows = []
        assert rows == []


def test_tenant_is_gone_after_the_block(env: Env) -> None:
    a = env.tenants[0]
    with psycopg.connect(env.as_("app"), autocommit=True) as app:
        with tenant(app, a):
            assert tenant_rows(app, env)
        assert app.execute("SELECT current_setting('app.tenant_id', true)").fetchone() == ("",)
        assert tenant_rows(app, env) == []
        with app.transaction():  # nested: a savepoint, reset when the block ends
            with tenant(app, a):
                assert tenant_rows(app, env)
            assert tenant_rows(app, env) == []
    with pytest.raises(InvalidSetting, match="'nope' is not a UUID"):
        tenancy.tenant_value("nope")


# -- writes --------------------------------------------------------------------------------------------
def test_tenant_writer_lands_its_rows_and_refuses_another_tenants(env: Env) -> None:
    a, b, _ = env.tenants
    mine = make_calls(6, tenants=1, start=datetime.now(UTC) - timedelta(hours=5), seed=99)
    mine = [dict(c, tenant_id=a) for c in mine]
    foreign = dict(mine[0], tenant_id=b, call_id=UUID(int=5, version=4))
    broken = dict(mine[1], call_id="not a uuid")
    with psycopg.connect(env.as_("tenant_writer")) as w:
        result = TenantWriter(w, a, env.settings).write([*mine, foreign, broken])
        assert result.written == 6
        reasons = [r.reason for r in result.rejected]
        assert any(f"tenant_id {b} is not this writer's tenant" in r for r in reasons)
        assert any("call_id" in r for r in reasons)
        assert TenantWriter(w, a, env.settings).write(mine).duplicates == 6  # a retry adds nothing
        # the database itself refuses, whatever the client does
        insert = "INSERT INTO call_logs (tenant_id, call_id, started_at) VALUES (%s, gen_random_uuid(), now())"
        with pytest.raises(pgerr.InsufficientPrivilege, match="row-level security"), tenant(w, a):
            w.execute(insert, (b,))
        with pytest.raises(pgerr.InsufficientPrivilege, match="row-level security"), w.transaction():
            w.execute(insert, (a,))  # no tenant set
        for stmt in ("SELECT 1 FROM call_logs", "DELETE FROM call_logs", "UPDATE call_logs SET transcript = ''"):
            with pytest.raises(pgerr.InsufficientPrivilege), tenant(w, a):
                w.execute(stmt)
    with psycopg.connect(env.dsn) as c:
        n = c.execute("SELECT count(*) FROM call_logs WHERE tenant_id = %s", (a,)).fetchone()
    assert n == (env.counts[a] + 6,)


def test_trusted_ingest_role_writes_but_cannot_read_transcripts(env: Env) -> None:
    ingest = env.as_("ingest")
    calls = make_calls(50, tenants=2, start=datetime.now(UTC) - timedelta(hours=3), seed=5)
    calls.append(dict(calls[0], started_at="yesterday"))  # quarantined, not lost
    with Writer(env.settings.with_(dsn=ingest)) as w:
        w.write_many(calls)
        first = w.flush()
        w.write_many(calls)  # re-sent: duplicates skipped without reading the table
        second = w.flush()
    assert (first.written, first.quarantined) == (50, 1)
    assert second.written == 0 and second.duplicates == 50
    with psycopg.connect(ingest) as c:
        for rel in ["call_logs", *children(env)[:3]]:
            with pytest.raises(pgerr.InsufficientPrivilege):
                c.execute(sql.SQL("SELECT transcript FROM {}").format(sql.Identifier(rel)))
            c.rollback()
        with pytest.raises(pgerr.InsufficientPrivilege):
            c.execute("SELECT raw FROM callvault.quarantine")


def test_writer_as_an_rls_bound_role_fails_at_start_naming_the_fix(env: Env) -> None:
    with pytest.raises(WriterError, match=f"trusted ingest role \\({env.roles.ingest}"):
        Writer(env.settings.with_(dsn=env.as_("app")))


def test_unique_key_errors_do_not_reveal_other_tenants(env: Env) -> None:
    a, b, _ = env.tenants
    with psycopg.connect(env.dsn) as c:
        call_id, started = c.execute(
            "SELECT call_id, started_at FROM call_logs WHERE tenant_id = %s LIMIT 1", (a,)
        ).fetchone()  # type: ignore[misc]
        keys = c.execute(
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = 'call_logs'::regclass AND indisunique"
        ).fetchall()
    assert keys and all("(tenant_id," in k[0] for k in keys)  # every unique key leads with tenant_id
    row = {"tenant_id": b, "call_id": call_id, "started_at": started}
    with psycopg.connect(env.as_("tenant_writer")) as w:
        assert TenantWriter(w, b, env.settings).write([row]).written == 1  # same call id, other tenant: no clash
        insert = "INSERT INTO call_logs (tenant_id, call_id, started_at) VALUES (%s, %s, %s)"
        with pytest.raises(pgerr.UniqueViolation) as exc, tenant(w, b):
            w.execute(insert, (b, call_id, started))
    assert exc.value.diag.message_detail is None  # no "Key (...)=(...)" under row-level security


# -- pooled connections --------------------------------------------------------------------------------
@pytest.mark.parametrize("autocommit", [True, False])
def test_ten_thousand_interleaved_pooled_transactions_never_leak(env: Env, autocommit: bool) -> None:
    stmt = "SELECT tenant_id FROM call_logs WHERE started_at >= %s AND started_at < %s"
    window = (env.since, env.until)
    leaks: list[str] = []
    lock = threading.Lock()
    done = Counter[str]()

    def work(seed: int, n: int) -> None:
        rng = random.Random(seed)
        for i in range(n):
            t = rng.choice(env.tenants)
            with pool.connection() as conn:
                if i % 10 == 9:  # a request that forgets the tenant sees nothing
                    got = [r[0] for r in conn.execute(stmt, window).fetchall()]
                    bad = bool(got)
                elif i % 10 == 4:  # a request that fails half-way: the tenant goes with its transaction
                    with contextlib.suppress(RuntimeError), tenant(conn, t):
                        conn.execute(stmt, window).fetchall()
                        raise RuntimeError("request failed")
                    got = [r[0] for r in conn.execute(stmt, window).fetchall()]
                    bad = bool(got)
                else:
                    with tenant(conn, t):
                        got = [r[0] for r in conn.execute(stmt, window).fetchall()]
                    bad = len(got) != env.counts[t] or set(got) != {t}
            with lock:
                done["tx"] += 1
                if bad:
                    leaks.append(f"{t}: {Counter(got)}")

    with ConnectionPool(env.as_("app"), min_size=2, max_size=2, kwargs={"autocommit": autocommit}) as pool:
        threads = [threading.Thread(target=work, args=(s, 5_000)) for s in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert done["tx"] == 10_000
    assert leaks == []


# -- hostile names -------------------------------------------------------------------------------------
def test_hostile_schema_table_and_role_names_are_quoted(dsn: str) -> None:
    s = Settings(dsn=dsn, schema='we"ird; DROP SCHEMA public --', table='call"logs; --')
    prefix = f"r{next(_counter)}\"; DROP ROLE postgres; --'"
    e = make_env(dsn, prefix, s)
    try:
        with psycopg.connect(dsn) as c:
            report = tenancy.audit(c, e.settings)
            assert not report.failed, report.findings
            names = {r[0] for r in c.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s", (prefix + "%",))}
            assert names == set(e.roles.as_dict().values())
            assert c.execute("SELECT to_regnamespace('public') IS NOT NULL").fetchone() == (True,)
        with psycopg.connect(e.as_("app")) as app, tenant(app, e.tenants[0]):
            assert set(tenant_rows(app, e)) == {e.tenants[0]}
    finally:
        drop_roles(dsn, e.roles)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--role-prefix", "x" * 60], "bytes; the limit is 63"),
        (["--role-prefix", "pg_evil"], "starts with 'pg_'"),
        (["--role-prefix", ""], "must not be empty"),
    ],
)
def test_bad_role_names_are_refused_before_any_sql(dsn: str, args: list[str], message: str) -> None:
    result = run("init", "--dsn", dsn, "--roles", *args, ok=False)
    assert result.exit_code == 2
    assert message in result.stderr
    with psycopg.connect(dsn) as c:
        assert c.execute("SELECT to_regclass('public.call_logs')").fetchone() == (None,)


@pytest.mark.single_node("grants made under SET ROLE to a NOLOGIN role: Citus runs them on the workers as that role")
def test_maintain_as_owner_secures_what_it_can_and_reports_the_rest(env: Env, partman: str) -> None:
    """A partition a superuser owns (pg_cron as postgres) cannot be changed by the owner role; a grant
    passed on WITH GRANT OPTION needs CASCADE. Neither stops the other repairs. (pg_partman 5.x reads the
    newest partitions' rows to premake, so there its maintenance itself is refused on the superuser's
    partition: callvault says which, and the superuser's `audit --fix` gives it back.)"""
    names = children(env)
    stuck, chained, plain = names[-1], names[-2], names[-3]
    bi = f"{env.roles.app}_bi"
    with psycopg.connect(env.dsn, autocommit=True) as c:
        ident = sql.Identifier
        c.execute(sql.SQL("CREATE ROLE {}").format(ident(bi)))
        c.execute(sql.SQL("ALTER TABLE {} OWNER TO CURRENT_USER").format(ident(stuck)))
        c.execute(sql.SQL("ALTER TABLE {} NO FORCE ROW LEVEL SECURITY").format(ident(plain)))
        c.execute(sql.SQL("GRANT SELECT ON {} TO {} WITH GRANT OPTION").format(ident(chained), ident(bi)))
        c.execute(sql.SQL("SET ROLE {}").format(ident(bi)))
        c.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(ident(chained), ident(env.roles.app)))
        c.execute("RESET ROLE")
    try:
        if partman == "5.x":
            refused = run("maintain", "--dsn", env.as_("owner"), ok=False)
            assert refused.exit_code != 0 and f"permission denied for table {stuck}" in refused.stderr
            run("audit", "--dsn", env.dsn, "--role-prefix", env.roles.app.removesuffix("_app"), "--fix")
            assert_isolated(env)
            return
        report = run("maintain", "--dsn", env.as_("owner"), "--json").stdout
        assert f"{plain}: force row-level security" in report
        assert f"{chained}: revoke all from {bi}" in report
        assert f"{stuck}: owner {env.roles.owner}: must be owner of table {stuck}" in report
        with psycopg.connect(env.dsn) as c:
            facts = read_facts(c, env.settings)
        assert {r.name: r.grantees for r in facts.children}[chained] == ()
        run("audit", "--dsn", env.dsn, "--role-prefix", env.roles.app.removesuffix("_app"), "--fix")  # superuser
        assert_isolated(env)
    finally:
        with psycopg.connect(env.dsn, autocommit=True) as c:
            c.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(bi)))
            c.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(bi)))


@pytest.mark.parametrize(
    ("setup", "expect"),
    [
        ("GRANT TRUNCATE ON call_logs TO {app}", "holds TRUNCATE on the parent"),
        ("CREATE VIEW all_calls AS SELECT * FROM call_logs; GRANT SELECT ON all_calls TO {app}",
         "view all_calls reads the table with the rights of"),
        ("GRANT USAGE ON SCHEMA callvault TO {app}; GRANT SELECT ON callvault.quarantine TO {app}",
         "can SELECT callvault.quarantine"),
        ("ALTER ROLE {app} CREATEROLE", "can become any role (CREATEROLE)"),
        ("GRANT SELECT (call_id) ON call_logs TO {ingest}", "holds SELECT on the parent"),
        ("CREATE ROLE {extra} CREATEROLE; GRANT {extra} TO {app}", "can become"),  # CREATEROLE one hop away
        ("ALTER ROLE {app} REPLICATION", "can become a WAL reader (REPLICATION)"),
        ("ALTER ROLE {ingest} REPLICATION", "ingest role"),
        ("GRANT USAGE ON SCHEMA callvault TO {app}; GRANT SELECT (raw) ON callvault.quarantine TO {app}",
         "can SELECT callvault.quarantine"),
        ("CREATE VIEW v1 AS SELECT * FROM call_logs; CREATE VIEW v2 AS SELECT * FROM v1; "
         "GRANT SELECT ON v2 TO {app}", "view v1 reads the table with the rights of"),
    ],
)  # fmt: skip
def test_audit_catches_ways_around_the_policy(env: Env, setup: str, expect: str) -> None:
    extra = f"{env.roles.app}_x"
    names = {"app": sql.Identifier(env.roles.app), "ingest": sql.Identifier(env.roles.ingest),
             "extra": sql.Identifier(extra)}  # fmt: skip
    try:
        with psycopg.connect(env.dsn, autocommit=True) as c:
            for stmt in setup.split("; "):
                c.execute(sql.SQL(stmt).format(**names))
        result = audit_cli(env, ok=False)
        assert result.exit_code == 3
        assert expect in result.stdout
    finally:
        with psycopg.connect(env.dsn, autocommit=True) as c:
            c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(extra)))


def test_readers_scope_every_read_pipelined_or_not_sync_and_async(env: Env) -> None:
    a, b, _ = env.tenants
    window = {"since": env.since, "until": env.until}
    with psycopg.connect(env.as_("app"), autocommit=True) as app:
        for pipeline in (False, True):
            r = Reader(app, env.settings, pipeline=pipeline)
            assert [r.count_calls(t, **window) for t in (a, b)] == [env.counts[a], env.counts[b]]
            calls = r.recent_calls(a, limit=10_000, **window).calls
            assert len(calls) == env.counts[a]
            assert r.get_call(b, calls[0].call_id) is None  # a's call, asked for as b: not there

    async def go() -> list[int]:
        async with await psycopg.AsyncConnection.connect(env.as_("app")) as aconn:
            out = []
            for pipeline in (False, True):
                r = AsyncReader(aconn, env.settings, pipeline=pipeline)
                out += [await r.count_calls(t, **window) for t in (a, b)]
            async with atenant(aconn, a):
                cur = await aconn.execute("SELECT count(*) FROM call_logs")
                out.append((await cur.fetchone())[0])  # type: ignore[index]
            return out

    assert asyncio.run(go()) == [env.counts[a], env.counts[b]] * 2 + [env.counts[a]]


def test_health_fails_on_a_leak(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLVAULT_ROLE_PREFIX", env.roles.app.removesuffix("_app"))  # status/health read it
    assert run("health", "--dsn", env.dsn).exit_code == 0
    with psycopg.connect(env.dsn, autocommit=True) as c:
        c.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(env.roles.ingest), sql.Identifier(env.roles.app)))
    assert f"can become {env.roles.ingest}" in run("health", "--dsn", env.dsn, ok=False).stderr
    with psycopg.connect(env.dsn, autocommit=True) as c:
        c.execute(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(env.roles.ingest), sql.Identifier(env.roles.app)))
    with psycopg.connect(env.dsn, autocommit=True) as c:
        c.execute("CREATE POLICY see_all ON call_logs USING (true)")
    result = run("health", "--dsn", env.dsn, ok=False)
    assert result.exit_code == 3
    assert "tenant isolation: permissive policy 'see_all'" in result.stderr
