"""Pure tenancy logic: the audit's verdicts, the repairs, role names, tenant values. No database."""

from __future__ import annotations

from dataclasses import replace
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callvault.config import Roles, Settings, roles_from_env
from callvault.errors import InvalidSetting
from callvault.tenancy.audit import ERROR, LEAK, WARNING, evaluate
from callvault.tenancy.facts import Facts, Grant, PolicyFact, RelFact, RoleFact, ViewFact, bypassing_views
from callvault.tenancy.policy import POLICY_NAME, TENANT_EXPR_STORED, create_policy_sql, role_sql, table
from callvault.tenancy.repair import repairs
from callvault.tenancy.session import tenant_value

GOOD = PolicyFact(POLICY_NAME, True, "*", True, TENANT_EXPR_STORED, TENANT_EXPR_STORED)
ROLES = Roles()


def rel(name: str, kind: str = "partition", **kw: object) -> RelFact:
    base = RelFact(name=name, kind=kind, owner="callvault_owner", rls=True, force=True, policies=(GOOD,))
    return replace(base, **kw)  # type: ignore[arg-type]


def facts(*children: RelFact, parent: RelFact | None = None, roles: tuple[RoleFact, ...] | None = None) -> Facts:
    default_roles = tuple(RoleFact(name, kind, True) for kind, name in ROLES.as_dict().items())
    return Facts(parent or rel("call_logs", "parent"), children, default_roles if roles is None else roles)


def severities(f: Facts) -> list[tuple[str, str]]:
    return [(x.severity, x.problem) for x in evaluate(f)]


def test_a_clean_table_has_no_findings_and_needs_no_repair() -> None:
    f = facts(rel("call_logs_p2026w01"), rel("call_logs_default", "default"))
    assert evaluate(f) == []
    assert repairs(f, Settings()) == []


def test_a_grant_on_a_child_is_an_error_and_a_leak_when_the_child_has_no_policy() -> None:
    protected = rel("call_logs_p2026w01", grantees=("callvault_app",))
    naked = rel("call_logs_p2026w02", rls=False, policies=(), grantees=("callvault_app",))
    found = evaluate(facts(protected, naked))
    by_rel = {(x.relation, x.severity) for x in found if x.role == "callvault_app"}
    assert ("call_logs_p2026w01", ERROR) in by_rel
    assert ("call_logs_p2026w02", LEAK) in by_rel
    assert found[0].severity == LEAK  # leaks first


def test_a_child_nobody_can_open_is_only_a_warning_until_maintain_repairs_it() -> None:
    f = facts(rel("call_logs_p2026w09", rls=False, force=False, policies=()))
    assert {s for s, _ in severities(f)} == {WARNING}
    done = [s.what for s in repairs(f, Settings())]
    assert done == [
        "call_logs_p2026w09: enable row-level security",
        "call_logs_p2026w09: force row-level security",
        f"call_logs_p2026w09: create {POLICY_NAME}",
    ]


def test_widening_policies_and_privileged_app_roles_are_leaks() -> None:
    wide = PolicyFact("support", True, "r", True, "true", None)
    roles = (
        RoleFact("callvault_owner", "owner", True, bypassrls=True),
        RoleFact("callvault_ingest", "ingest", True, bypassrls=True, reads_transcript=("call_logs",)),
        RoleFact("callvault_app", "app", True, bypassrls=True, can_become=("postgres",)),
        RoleFact("callvault_tenant_writer", "tenant_writer", False),
    )
    found = severities(facts(parent=rel("call_logs", "parent", policies=(GOOD, wide)), roles=roles))
    leaks = [p for s, p in found if s == LEAK]
    assert any("'support'" in p for p in leaks)
    assert any("has BYPASSRLS" in p for p in leaks) and any("can become postgres" in p for p in leaks)
    assert any("can SELECT transcripts of call_logs" in p for p in leaks)
    assert (ERROR, "the tenant_writer role callvault_tenant_writer does not exist") in found
    restrictive = replace(wide, permissive=False)
    assert not evaluate(facts(parent=rel("call_logs", "parent", policies=(GOOD, restrictive))))


def test_an_altered_callvault_policy_is_replaced_on_the_parent() -> None:
    altered = replace(GOOD, using="true")
    f = facts(parent=rel("call_logs", "parent", policies=(altered,)))
    assert any(s == LEAK for s, _ in severities(f))
    assert [s.what for s in repairs(f, Settings())] == [
        f"call_logs: replace altered {POLICY_NAME}",
        f"call_logs: create {POLICY_NAME}",
    ]


def test_repairs_revoke_every_grant_and_align_the_owner() -> None:
    """In the partition's own schema; CASCADE takes grants passed on WITH GRANT OPTION; the parent's
    owner keeps its rights once it owns the partition."""
    child = rel("call_logs_p2026w03", owner="postgres", grantees=("PUBLIC", "bi", "callvault_owner"), schema="old")
    stmts = [s.statement.as_string(None) for s in repairs(facts(child), Settings())]
    assert stmts == [
        'ALTER TABLE "old"."call_logs_p2026w03" OWNER TO "callvault_owner"',
        'REVOKE ALL ON TABLE "old"."call_logs_p2026w03" FROM PUBLIC CASCADE',
        'REVOKE ALL ON TABLE "old"."call_logs_p2026w03" FROM "bi" CASCADE',
    ]


def test_restrictive_policies_on_a_partition_are_kept_permissive_extras_dropped() -> None:
    narrow = PolicyFact("eu_only", False, "r", True, "(region = 'eu')", None)
    wide = PolicyFact("support", True, "r", True, "true", None)
    f = facts(rel("call_logs_p2026w04", policies=(GOOD, narrow, wide)))
    assert [s.what for s in repairs(f, Settings())] == ["call_logs_p2026w04: drop policy support"]


@pytest.mark.parametrize(
    ("grant", "severity"),
    [
        (Grant("callvault_app", "TRUNCATE", False), LEAK),  # TRUNCATE ignores row-level security
        (Grant("callvault_app", "REFERENCES", False), LEAK),
        (Grant("bi", "SELECT", True), LEAK),  # a BYPASSRLS role reading the parent
        (Grant("callvault_ingest", "SELECT", True), LEAK),
        (Grant("callvault_app", "UPDATE", False), ERROR),  # bound by RLS, but beyond the role's purpose
        (Grant("PUBLIC", "SELECT", False), ERROR),
        (Grant("bi", "SELECT", False), None),  # bound by RLS like the app role
        (Grant("callvault_ingest", "INSERT", True), None),
        (Grant("etl", "INSERT", True), ERROR),  # writes for any tenant, reads nothing
    ],
)
def test_grants_on_the_parent_are_checked_against_each_roles_needs(grant: Grant, severity: str | None) -> None:
    found = evaluate(replace(facts(), parent_grants=(grant,)))
    assert [f.severity for f in found] == ([severity] if severity else [])


def test_views_quarantine_and_createrole_are_leaks() -> None:
    roles = tuple(RoleFact(name, kind, True) for kind, name in ROLES.as_dict().items())
    roles = (roles[0], roles[1], replace(roles[2], reads_quarantine=True, can_become=("any role (CREATEROLE)",)),
             roles[3])  # fmt: skip
    views = (ViewFact("public.all_calls", "postgres", False, True), ViewFact("public.mine", "postgres", True, True))
    found = severities(replace(facts(roles=roles), views=views))
    assert (LEAK, "application role callvault_app can become any role (CREATEROLE): row-level security "
            "does not bind it") in found  # fmt: skip
    assert any(s == LEAK and "callvault.quarantine" in p for s, p in found)
    assert [p for _, p in found if "view" in p] == [
        "view public.all_calls reads the table with the rights of postgres, which bypasses row-level security "
        "(and others may select from it)"
    ]


def test_policy_and_role_ddl_quote_hostile_names() -> None:
    s = Settings(schema='a"; DROP TABLE x; --', table="t\\; --")
    text = create_policy_sql(table(s)).as_string(None)
    assert '"a""; DROP TABLE x; --"."t\\; --"' in text
    assert (
        role_sql('r"; DROP ROLE postgres; --', "app", exists=False)
        .as_string(None)
        .startswith('CREATE ROLE "r""; DROP ROLE postgres; --" WITH LOGIN')
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, Roles()),
        ({"CALLVAULT_ROLE_PREFIX": "acme"}, Roles.with_prefix("acme")),
        ({"CALLVAULT_APP_ROLE": "web"}, Roles(app="web")),
    ],
)
def test_roles_from_env(env: dict[str, str], expected: Roles) -> None:
    assert roles_from_env(env) == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"app": "x" * 64}, "the limit is 63 bytes"),
        ({"app": "pg_app"}, "starts with 'pg_'"),
        ({"app": "callvault_owner"}, "four different roles"),
        ({"ingest": "a\x00b"}, "NUL"),
    ],
)
def test_bad_role_names_are_refused(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidSetting, match=message):
        Roles(**kwargs)


@given(st.uuids())
def test_tenant_value_accepts_any_uuid_form(u: UUID) -> None:
    assert tenant_value(u) == tenant_value(str(u).upper()) == tenant_value(u.hex) == str(u)


@pytest.mark.parametrize("bad", ["", " ", "tenant-a", "1234", None, 42])
def test_tenant_value_refuses_non_uuids(bad: object) -> None:
    with pytest.raises(InvalidSetting, match="is not a UUID"):
        tenant_value(bad)  # type: ignore[arg-type]


def test_a_bypassing_view_is_exposed_through_any_view_built_on_it() -> None:
    # (view, source, name, owner, bypasses, security_invoker, granted); 1 = the table
    rows = [
        (10, 1, "v1", "postgres", True, False, False),
        (11, 10, "v2", "app_owner", False, False, True),  # granted, reads v1
        (12, 1, "quiet", "postgres", True, False, False),
        (13, 1, "invoker", "postgres", True, True, True),
    ]
    views = {v.name: v for v in bypassing_views(rows)}
    assert set(views) == {"v1", "quiet", "invoker"}
    assert views["v1"].granted and not views["quiet"].granted
    found = severities(replace(facts(), views=tuple(views.values())))
    assert [s for s, p in found if "v1" in p] == [LEAK]
    assert [s for s, p in found if "quiet" in p] == [WARNING]
    assert not [p for _, p in found if "invoker" in p]
