"""Prove isolation (``callvault audit``) and repair drift (every ``maintain`` run).

The invariant, on the parent and on every partition (attached, default, detached awaiting archive,
restored):

* RLS enabled and forced, callvault's tenant policy present and unchanged, no other permissive
  policy (Postgres ORs permissive policies together, so any other one widens access);
* partitions carry no grants at all (the parent is the only way in) and share the parent's owner;
* the application roles are not superuser, have no BYPASSRLS, cannot become a role that has or that
  owns the table, and read no partition by name; the trusted ingest role reads no transcript.

:func:`evaluate` is pure (facts in, findings out); the repairs live in :mod:`callvault.tenancy.repair`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from callvault.config import Settings
from callvault.db import Conn
from callvault.tenancy import policy as p
from callvault.tenancy.facts import Facts, Grant, RelFact, RoleFact, read_facts
from callvault.tenancy.repair import SecureResult, require_table, secure

LEAK, ERROR, WARNING = "leak", "error", "warning"
KIND_NAMES = {
    "partition": "partition", "default": "default partition", "detached": "detached partition",
    "side": "restored side table",
}  # fmt: skip
FIX = "run `callvault audit --fix` (every `callvault maintain` does the same)"


@dataclass(frozen=True)
class Finding:
    """One verdict of the audit: ``severity`` (leak, error, warning), the relation and role concerned,
    the problem and its fix."""

    severity: str  # leak: some role can read across tenants now; error: a defence is missing; warning
    relation: str | None
    role: str | None
    problem: str
    fix: str

    def to_dict(self) -> dict[str, str | None]:
        """The finding as JSON-ready values."""
        return dict(self.__dict__)


@dataclass
class AuditReport:
    """What ``callvault audit`` found (``findings``) and repaired (``repaired``, with ``fix=True``)."""

    table: str
    partitions: int
    findings: list[Finding] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[Finding]:
        """The findings that make the audit fail (leaks and errors)."""
        return [f for f in self.findings if f.severity != WARNING]

    def to_dict(self) -> dict[str, object]:
        """The report as the JSON ``callvault audit --json`` prints."""
        return {
            "table": self.table, "partitions_checked": self.partitions, "ok": not self.failed,
            "findings": [f.to_dict() for f in self.findings], "repaired": self.repaired,
        }  # fmt: skip


def _relation(rel: RelFact) -> list[Finding]:
    out: list[Finding] = []
    where = f"the parent {rel.name}" if rel.kind == "parent" else f"{KIND_NAMES[rel.kind]} {rel.name}"
    if not rel.rls:
        out.append(Finding(LEAK if rel.kind == "parent" else ERROR, rel.name, None,
                           f"row-level security is off on {where}", FIX))  # fmt: skip
    elif not rel.force:
        out.append(Finding(ERROR, rel.name, rel.owner, f"row-level security is not forced on {where}: its owner "
                           "reads every tenant", FIX))  # fmt: skip
    if not rel.has_policy:
        out.append(Finding(ERROR, rel.name, None, f"{where} lacks the unchanged policy {p.POLICY_NAME}", FIX))
    for pol in rel.widening:
        out.append(Finding(LEAK, rel.name, None, f"permissive policy {pol.name!r} on {where} (USING {pol.using}) "
                           "is OR-ed with the tenant policy and widens access",
                           "DROP POLICY it, or make it AS RESTRICTIVE"))  # fmt: skip
    return out


def _child(rel: RelFact, parent: RelFact) -> list[Finding]:
    out = _relation(rel)
    if not rel.isolated and not rel.grantees:  # nobody but the owner can open it: a missing defence
        out = [Finding(WARNING, f.relation, f.role, f.problem, f.fix) for f in out]
    for role in rel.grantees:
        out.append(Finding(
            ERROR if rel.isolated else LEAK, rel.name, role,
            f"{role} holds privileges on {KIND_NAMES[rel.kind]} {rel.name}"
            + ("" if rel.isolated else " and the partition does not enforce the tenant policy: it reads every tenant"),
            f"partitions carry no grants: REVOKE ALL ON it FROM {role}, or {FIX}",
        ))  # fmt: skip
    if rel.owner != parent.owner:  # e.g. pg_cron ran pg_partman as a superuser; harmless while ungranted
        out.append(Finding(ERROR if rel.grantees else WARNING, rel.name, rel.owner,
                           f"{rel.name} is owned by {rel.owner}, the parent by {parent.owner}", FIX))  # fmt: skip
    return out


def _role(role: RoleFact, facts: Facts) -> list[Finding]:
    if not role.exists:
        return [
            Finding(
                ERROR,
                None,
                role.name,
                f"the {role.kind} role {role.name} does not exist",
                f"run `callvault init --roles`, or set CALLVAULT_{role.kind.upper()}_ROLE to your role",
            )
        ]
    out: list[Finding] = []
    owners = {facts.parent.owner, *(c.owner for c in facts.children)}
    if role.kind in ("app", "tenant_writer"):
        why = [w for w, bad in (("is superuser", role.superuser), ("has BYPASSRLS", role.bypassrls),
                                ("owns the table", role.name in owners)) if bad]  # fmt: skip
        why += [f"can become {other}" for other in role.can_become]
        out += [Finding(LEAK, None, role.name, f"application role {role.name} {w}: row-level security does not "
                        "bind it", f"ALTER ROLE / REVOKE so that it does not ({w})") for w in why]  # fmt: skip
    if role.kind != "owner":  # through PUBLIC or a role it belongs to (a direct grant is reported above)
        direct = {c.name for c in facts.children if role.name in c.grantees}
        out += [Finding(LEAK if role.kind == "ingest" else ERROR, name, role.name,
                        f"{role.name} can read partition {name} by name (through PUBLIC or a role it is member of)",
                        f"REVOKE it, or {FIX}")
                for name in role.reads_children if name not in direct]  # fmt: skip
    if role.kind == "ingest":
        out += [Finding(LEAK, name, role.name, f"the trusted ingest role {role.name} can SELECT transcripts of {name}",
                        f"REVOKE SELECT ON {name} FROM {role.name}: it writes, it never reads")
                for name in role.reads_transcript if name == facts.parent.name]  # fmt: skip
    if role.kind == "ingest":
        why = ["is superuser"] if role.superuser else []
        why += [f"can become {other}" for other in role.can_become if "REPLICATION" in other or other.startswith("pg_")]
        out += [Finding(LEAK, None, role.name, f"the trusted ingest role {role.name} {w}: it could read what it must "
                        "only write", f"ALTER ROLE / REVOKE so that it does not ({w})") for w in why]  # fmt: skip
    if role.kind != "owner" and role.reads_quarantine:
        out.append(Finding(LEAK, "callvault.quarantine", role.name, f"{role.name} can SELECT callvault.quarantine, "
                           "which holds rejected rows of every tenant", f"REVOKE SELECT ON callvault.quarantine "
                           f"FROM {role.name} (and from PUBLIC)"))  # fmt: skip
    return out


# What each role may hold on the parent; anything else is a finding. Other (non-bypassing) roles may
# hold what row-level security governs; TRUNCATE ignores it, REFERENCES/TRIGGER reach around it.
ALLOWED = {"app": {"SELECT"}, "tenant_writer": {"INSERT"}, "ingest": {"INSERT"}}
AROUND_RLS = {"TRUNCATE", "REFERENCES", "TRIGGER"}
PRIVILEGES = {"SELECT", "INSERT", "UPDATE", "DELETE", *AROUND_RLS}  # what a table grant can be


def _parent_grants(facts: Facts) -> list[Finding]:
    return [f for _, f in _bad_parent_grants(facts)]


def _bad_parent_grants(facts: Facts) -> list[tuple[Grant, Finding]]:
    """Each grant on the parent that breaks the invariant, with its finding (``audit --fix`` revokes them)."""
    kinds = {r.name: r.kind for r in facts.roles if r.kind != "owner"}
    out: list[tuple[Grant, Finding]] = []
    for g in facts.parent_grants:
        what = f"{g.role} holds {g.privilege} on the parent {facts.parent.name}"
        revoke = f"REVOKE {g.privilege} ON {facts.parent.name} FROM {g.role}"
        if g.privilege in AROUND_RLS:
            out.append(
                (
                    g,
                    Finding(
                        LEAK,
                        facts.parent.name,
                        g.role,
                        f"{what}, which row-level security does not "
                        "restrict (TRUNCATE empties every tenant; REFERENCES/TRIGGER see their rows)",
                        revoke,
                    ),
                )
            )
        elif g.bypasses and g.privilege != "INSERT":
            out.append((g, Finding(LEAK, facts.parent.name, g.role, f"{what} and bypasses row-level security", revoke)))
        elif g.bypasses and kinds.get(g.role) != "ingest":
            out.append(
                (
                    g,
                    Finding(
                        ERROR,
                        facts.parent.name,
                        g.role,
                        f"{what} and bypasses row-level security: it can "
                        "write rows for any tenant, which only the trusted ingest role should",
                        revoke,
                    ),
                )
            )
        elif g.role in kinds and g.privilege not in ALLOWED[kinds[g.role]]:
            out.append(
                (
                    g,
                    Finding(
                        ERROR,
                        facts.parent.name,
                        g.role,
                        f"{what}: the {kinds[g.role]} role needs only {'/'.join(sorted(ALLOWED[kinds[g.role]]))}",
                        revoke,
                    ),
                )
            )
        elif g.role == "PUBLIC":
            out.append(
                (
                    g,
                    Finding(
                        ERROR,
                        facts.parent.name,
                        "PUBLIC",
                        f"{what}: any role can set app.tenant_id and use it for that tenant",
                        revoke,
                    ),
                )
            )
    return out  # fmt: skip


def _views(facts: Facts) -> list[Finding]:
    return [
        Finding(LEAK if v.granted else WARNING, v.name, v.owner,
                f"view {v.name} reads the table with the rights of {v.owner}, which bypasses row-level security"
                + (" (and others may select from it)" if v.granted else ""),
                f"ALTER VIEW {v.name} SET (security_invoker = true), or change its owner")
        for v in facts.views if not v.security_invoker
    ]  # fmt: skip


def evaluate(facts: Facts) -> list[Finding]:
    """Every way the invariant is broken, leaks first (pure)."""
    out = _relation(facts.parent) + _parent_grants(facts) + _views(facts)
    for child in facts.children:
        out += _child(child, facts.parent)
    for role in facts.roles:
        out += _role(role, facts)
    for who in facts.default_grantees:
        out.append(Finding(WARNING, None, who, f"ALTER DEFAULT PRIVILEGES grants {who} privileges on every new "
                           "table in the schema, so new partitions start with grants",
                           "ALTER DEFAULT PRIVILEGES ... REVOKE; maintenance revokes them meanwhile"))  # fmt: skip
    order = {LEAK: 0, ERROR: 1, WARNING: 2}
    return sorted(out, key=lambda f: order[f.severity])


def _revoke_parent_grants(conn: Conn, settings: Settings, result: SecureResult) -> SecureResult:
    """Revoke every grant on the parent the audit reports (a role left by an earlier --role-prefix, PUBLIC,
    a privilege a role does not need), each in its own savepoint."""
    parent = sql.Identifier(settings.schema, settings.table)
    for g, _ in _bad_parent_grants(read_facts(conn, settings)):
        if g.privilege not in PRIVILEGES:
            continue
        who = sql.SQL("PUBLIC") if g.role == "PUBLIC" else sql.Identifier(g.role)
        what = f"{settings.table}: revoke {g.privilege} from {g.role}"
        try:
            with conn.transaction():
                conn.execute(sql.SQL("REVOKE {} ON {} FROM {}").format(sql.SQL(g.privilege), parent, who))
            result.done.append(what)
        except psycopg.Error as exc:
            result.failed.append(f"{what}: {exc.diag.message_primary or exc}")
    return result


def audit(conn: Conn, settings: Settings, *, fix: bool = False) -> AuditReport:
    """Findings after an optional repair (``fix``: one transaction, under the lock budget)."""
    require_table(conn, settings)
    repaired: list[str] = []
    if fix:
        with conn.transaction():
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{settings.lock_timeout_ms}ms",))
            result = secure(conn, settings)
            result = _revoke_parent_grants(conn, settings, result)
        repaired = result.done + [f"FAILED {f}" for f in result.failed]
    facts = read_facts(conn, settings)
    return AuditReport(settings.qualified, len(facts.children), evaluate(facts), repaired)
