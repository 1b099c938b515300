"""Read what isolation depends on from the catalog: the parent, every partition (attached, default,
detached awaiting archive), their RLS switches, policies, owners and grants, and the roles.

Catalog reads only (``pg_get_expr`` on a policy takes an ACCESS SHARE lock, nothing stronger).
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from callvault import catalog
from callvault.config import Settings
from callvault.db import Conn
from callvault.tenancy.policy import POLICY_NAME, TENANT_EXPR_STORED

RELS_SQL = """
WITH rels AS (
    SELECT c.oid, c.relname, c.relowner, c.relrowsecurity, c.relforcerowsecurity, c.relacl,
           CASE WHEN c.oid = %(parent)s::regclass THEN 'parent'
                WHEN c.relispartition AND pg_get_expr(c.relpartbound, 0) = 'DEFAULT' THEN 'default'
                WHEN c.relispartition THEN 'partition'
                ELSE 'detached' END AS kind
    FROM pg_class c
    WHERE c.oid = %(parent)s::regclass
       OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = %(parent)s::regclass)
       OR c.oid IN (SELECT to_regclass(x) FROM unnest(%(detached)s::text[]) AS x)
)
SELECT r.oid, r.relname, r.kind, pg_get_userbyid(r.relowner), r.relrowsecurity, r.relforcerowsecurity,
       ARRAY(SELECT DISTINCT CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(g.grantee) END
             FROM (SELECT (aclexplode(r.relacl)).grantee
                   UNION ALL
                   SELECT (aclexplode(a.attacl)).grantee FROM pg_attribute a
                   WHERE a.attrelid = r.oid AND a.attacl IS NOT NULL) AS g
             WHERE g.grantee <> r.relowner)
FROM rels r
ORDER BY r.kind = 'parent' DESC, r.relname
"""

POLICIES_SQL = """
SELECT p.polrelid, p.polname, p.polpermissive, p.polcmd, p.polroles = '{0}'::oid[],
       pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)
FROM pg_policy p WHERE p.polrelid = ANY(%s::oid[]) ORDER BY p.polname
"""

ROLES_SQL = """
SELECT r.rolname, r.rolsuper, r.rolbypassrls,
       ARRAY(SELECT o.rolname FROM pg_roles o
             WHERE o.oid <> r.oid AND (o.rolsuper OR o.rolbypassrls OR o.rolname = ANY(%(owners)s))
               AND pg_has_role(r.oid, o.oid, 'MEMBER') ORDER BY 1),
       ARRAY(SELECT c.relname FROM unnest(%(children)s::oid[]) AS u(oid) JOIN pg_class c ON c.oid = u.oid
             WHERE has_any_column_privilege(r.oid, u.oid, 'SELECT') ORDER BY 1),
       ARRAY(SELECT c.relname FROM unnest(%(all)s::oid[]) AS u(oid) JOIN pg_class c ON c.oid = u.oid
             WHERE has_column_privilege(r.oid, u.oid, 'transcript', 'SELECT') ORDER BY 1)
FROM pg_roles r WHERE r.rolname = ANY(%(names)s)
"""

DEFAULT_ACL_SQL = """
SELECT DISTINCT CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(g.grantee) END
FROM pg_default_acl d, aclexplode(d.defaclacl) AS g
WHERE d.defaclobjtype = 'r' AND g.grantee <> d.defaclrole
  AND (d.defaclnamespace = 0 OR d.defaclnamespace = (SELECT oid FROM pg_namespace WHERE nspname = %s))
ORDER BY 1
"""


@dataclass(frozen=True)
class PolicyFact:
    name: str
    permissive: bool
    cmd: str  # '*' = ALL
    to_public: bool
    using: str | None
    check: str | None

    @property
    def canonical(self) -> bool:
        """callvault's tenant policy, unchanged."""
        return (
            self.name == POLICY_NAME and self.permissive and self.cmd == "*" and self.to_public
            and self.using == TENANT_EXPR_STORED and self.check == TENANT_EXPR_STORED
        )  # fmt: skip


@dataclass(frozen=True)
class RelFact:
    name: str
    kind: str  # parent | partition | default | detached
    owner: str
    rls: bool
    force: bool
    policies: tuple[PolicyFact, ...] = ()
    grantees: tuple[str, ...] = ()  # roles other than the owner holding any table or column privilege

    @property
    def has_policy(self) -> bool:
        return any(p.canonical for p in self.policies)

    @property
    def widening(self) -> tuple[PolicyFact, ...]:
        """Permissive policies other than callvault's: Postgres ORs them in, so each widens access."""
        return tuple(p for p in self.policies if p.permissive and not p.canonical)

    @property
    def isolated(self) -> bool:
        return self.rls and self.force and self.has_policy and not self.widening


@dataclass(frozen=True)
class RoleFact:
    name: str
    kind: str  # owner | ingest | app | tenant_writer
    exists: bool
    superuser: bool = False
    bypassrls: bool = False
    can_become: tuple[str, ...] = ()  # superuser/BYPASSRLS/owner roles it is a member of
    reads_children: tuple[str, ...] = ()  # partitions it can SELECT by name
    reads_transcript: tuple[str, ...] = ()  # relations whose transcript column it can SELECT


@dataclass(frozen=True)
class Facts:
    parent: RelFact
    children: tuple[RelFact, ...]
    roles: tuple[RoleFact, ...]
    default_grantees: tuple[str, ...] = ()  # ALTER DEFAULT PRIVILEGES grants on new tables


def read_facts(conn: Conn, settings: Settings) -> Facts:
    detached = [sql.Identifier(settings.schema, name).as_string() for name, _ in catalog.list_detached(conn, settings)]
    rows = conn.execute(RELS_SQL, {"parent": catalog.parent_regclass(settings), "detached": detached}).fetchall()
    oids = [r[0] for r in rows]
    policies: dict[int, list[PolicyFact]] = {oid: [] for oid in oids}
    for relid, *values in conn.execute(POLICIES_SQL, (oids,)).fetchall():
        policies[relid].append(PolicyFact(*values))
    rels = [
        RelFact(name=name, kind=kind, owner=owner, rls=rls, force=force, policies=tuple(policies[oid]),
                grantees=tuple(sorted(grantees)))
        for oid, name, kind, owner, rls, force, grantees in rows
    ]  # fmt: skip
    child_oids = [oid for oid, rel in zip(oids, rels, strict=True) if rel.kind != "parent"]
    wanted = settings.roles.as_dict()
    found = {
        name: RoleFact(name, "", True, su, bypass, tuple(become), tuple(children), tuple(transcript))
        for name, su, bypass, become, children, transcript in conn.execute(
            ROLES_SQL,
            {"owners": sorted({r.owner for r in rels}), "children": child_oids, "all": oids,
             "names": list(wanted.values())},
        ).fetchall()
    }  # fmt: skip
    roles = tuple(
        RoleFact(**{**found[name].__dict__, "kind": kind}) if name in found else RoleFact(name, kind, exists=False)
        for kind, name in wanted.items()
    )
    defaults = tuple(r[0] for r in conn.execute(DEFAULT_ACL_SQL, (settings.schema,)).fetchall())
    return Facts(parent=rels[0], children=tuple(rels[1:]), roles=roles, default_grantees=defaults)
