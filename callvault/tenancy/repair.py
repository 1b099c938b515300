"""Repair isolation drift: the statements (pure :func:`repairs`) and running them (:func:`secure`).

Every ``maintain``, ``init``, ``restore`` and ``audit --fix`` calls :func:`secure`; on a table that
has not drifted it reads the catalog and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from callvault import catalog
from callvault.config import Settings
from callvault.db import Conn
from callvault.errors import CallvaultError, NotInitialised
from callvault.tenancy import policy as p
from callvault.tenancy.facts import Facts, read_facts


def repairs(facts: Facts, settings: Settings) -> list[p.Statement]:
    """Statements that restore the invariant where it drifted (pure; empty when nothing drifted).
    Widening policies and role attributes are reported, not changed: they are someone's decision."""
    del settings  # every relation carries its own schema
    out: list[p.Statement] = []
    owner = facts.parent.owner
    for rel in (facts.parent, *facts.children):
        ident = sql.Identifier(rel.schema, rel.name)
        if rel.kind != "parent" and rel.owner != owner:
            out.append(p.Statement(f"{rel.name}: owner {owner}", p.owner_sql(ident, owner)))
        if not rel.rls:
            out.append(p.Statement(f"{rel.name}: enable row-level security", p.enable_rls_sql(ident)))
        if not rel.force:
            out.append(p.Statement(f"{rel.name}: force row-level security", p.force_rls_sql(ident)))
        if rel.kind != "parent":  # permissive extras widen access; restrictive ones only narrow it: kept
            out += [p.Statement(f"{rel.name}: drop policy {pol.name}", p.drop_policy_sql(pol.name, ident))
                    for pol in rel.policies
                    if not pol.canonical and (pol.permissive or pol.name == p.POLICY_NAME)]  # fmt: skip
            # CASCADE: also what a grantee passed on WITH GRANT OPTION. The parent's owner keeps its rights.
            out += [p.Statement(f"{rel.name}: revoke all from {who}", p.revoke_all_sql(ident, who))
                    for who in rel.grantees if who != owner]  # fmt: skip
        if not rel.has_policy:
            if any(pol.name == p.POLICY_NAME for pol in rel.policies) and rel.kind == "parent":
                out.append(p.Statement(f"{rel.name}: replace altered {p.POLICY_NAME}",
                                       p.drop_policy_sql(p.POLICY_NAME, ident)))  # fmt: skip
            out.append(p.Statement(f"{rel.name}: create {p.POLICY_NAME}", p.create_policy_sql(ident)))
    return out


def require_table(conn: Conn, settings: Settings) -> None:
    if not catalog.table_exists(conn, settings):
        raise NotInitialised(f"{settings.qualified} does not exist: run `callvault init --roles` first")


@dataclass
class SecureResult:
    """Tenant-isolation repairs: ``done`` (what was fixed) and ``failed`` (``"<what>: <why>"``)."""

    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # "<what>: <why>"; the next run tries again

    def require(self, what: str, only: str | None = None) -> list[str]:
        """``done``, or CallvaultError when a repair (of relation ``only``, if given) failed: for callers
        that must not go on unprotected. Other relations' failures stay reported, for maintenance."""
        failed = [f for f in self.failed if only is None or f.split(":", 1)[0] == only]
        if failed:
            more = f" (+{len(failed) - 3} more)" if len(failed) > 3 else ""
            raise CallvaultError(f"{what}: could not secure {'; '.join(failed[:3])}{more}. Run it as the "
                                 "table's owner role or a superuser")  # fmt: skip
        return self.done


def secure(conn: Conn, settings: Settings) -> SecureResult:
    """Repair drift on the parent, every partition and marked side tables, each repair in its own
    savepoint: one that cannot succeed (say, a partition a superuser owns) is reported, the rest land."""
    require_table(conn, settings)
    result = SecureResult()
    for step in repairs(read_facts(conn, settings), settings):
        try:
            with conn.transaction():
                conn.execute(step.statement)
            result.done.append(step.what)
        except psycopg.Error as exc:
            result.failed.append(f"{step.what}: {exc.diag.message_primary or exc}")
    return result
