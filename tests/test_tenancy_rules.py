"""Pure tenancy logic: the audit's verdicts, the repairs, role names, tenant values. No database."""

from __future__ import annotations

from dataclasses import replace
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callvault.config import Roles, Settings, roles_from_env
from callvault.errors import InvalidSetting
from callvault.tenancy.audit import ERROR, LEAK, WARNING, evaluate, repairs
from callvault.tenancy.facts import Facts, PolicyFact, RelFact, RoleFact
from callvault.tenancy.policy import POLICY_NAME, TENANT_EXPR_STORED, create_policy_sql, role_sql, table
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
    child = rel("call_logs_p2026w03", owner="postgres", grantees=("PUBLIC", "bi"))
    stmts = [s.statement.as_string(None) for s in repairs(facts(child), Settings())]
    assert stmts == [
        'ALTER TABLE "public"."call_logs_p2026w03" OWNER TO "callvault_owner"',
        'REVOKE ALL ON TABLE "public"."call_logs_p2026w03" FROM PUBLIC',
        'REVOKE ALL ON TABLE "public"."call_logs_p2026w03" FROM "bi"',
    ]


def test_policy_and_role_ddl_quote_hostile_names() -> None:
    s = Settings(schema='a"; DROP TABLE x; --', table="t'; --")
    text = create_policy_sql(table(s)).as_string(None)
    assert '"a""; DROP TABLE x; --"."t\'; --"' in text
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
