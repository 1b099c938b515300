"""Read what isolation depends on from the catalog: the parent, every partition (attached, default,
detached awaiting archive), their RLS switches, policies, owners and grants, and the roles.

Catalog reads only (``pg_get_expr`` on a policy takes an ACCESS SHARE lock, nothing stronger).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import sql

from callvault import catalog
from callvault.config import META_SCHEMA, Settings
from callvault.db import Conn
from callvault.tenancy.policy import POLICY_NAME, TENANT_EXPR_STORED

RELS_SQL = """
WITH marked AS (
    SELECT objoid FROM pg_description
    WHERE classoid = 'pg_class'::regclass AND objsubid = 0 AND description = %(mark)s
), rels AS (
    SELECT c.oid, c.relnamespace, c.relname, c.relowner, c.relrowsecurity, c.relforcerowsecurity, c.relacl,
           CASE WHEN c.oid = %(parent)s::regclass THEN 'parent'
                WHEN c.relispartition AND pg_get_expr(c.relpartbound, 0) = 'DEFAULT' THEN 'default'
                WHEN c.relispartition THEN 'partition'
                WHEN c.oid IN (SELECT objoid FROM marked) THEN 'side'
                ELSE 'detached' END AS kind
    FROM pg_class c
    WHERE c.oid = %(parent)s::regclass
       OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = %(parent)s::regclass)
       OR c.oid IN (SELECT to_regclass(x) FROM unnest(%(detached)s::text[]) AS x)
       OR c.oid IN (SELECT objoid FROM marked)
)
SELECT r.oid, (SELECT nspname FROM pg_namespace WHERE oid = r.relnamespace), r.relname, r.kind,
       pg_get_userbyid(r.relowner), r.relrowsecurity, r.relforcerowsecurity,
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

# Grants on the parent, per privilege; whether the grantee escapes row-level security.
PARENT_GRANTS_SQL = """
SELECT DISTINCT CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE r.rolname END, g.privilege_type,
       COALESCE(r.rolsuper OR r.rolbypassrls, false)
FROM pg_class c,
     LATERAL (SELECT (aclexplode(c.relacl)).*
              UNION ALL
              SELECT (aclexplode(a.attacl)).* FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attacl IS NOT NULL) g
     LEFT JOIN pg_roles r ON r.oid = g.grantee
WHERE c.oid = %s::regclass AND g.grantee <> c.relowner
ORDER BY 1, 2
"""

# Views over the table (directly or through other views) run with their owner's rights: one owned
# by a role that escapes row-level security (and not security_invoker) reads every tenant for
# whoever may select from it or from any view built on it.
VIEWS_SQL = """
WITH RECURSIVE edges(view, source) AS (
    SELECT DISTINCT w.ev_class, d.refobjid
    FROM pg_depend d JOIN pg_rewrite w ON w.oid = d.objid
    WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
      AND d.refobjid = ANY(%s::oid[]) AND w.ev_class <> d.refobjid
    UNION
    SELECT w.ev_class, d.refobjid
    FROM edges e JOIN pg_depend d ON d.refobjid = e.view
    JOIN pg_rewrite w ON w.oid = d.objid
    WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass AND w.ev_class <> d.refobjid
)
SELECT e.view, e.source, v.oid::regclass::text, o.rolname, o.rolsuper OR o.rolbypassrls,
       EXISTS (SELECT 1 FROM unnest(v.reloptions) opt WHERE opt ~* '^security_invoker=(true|on|1|yes)$'),
       EXISTS (SELECT 1 FROM aclexplode(v.relacl) g WHERE g.grantee <> v.relowner)
FROM edges e JOIN pg_class v ON v.oid = e.view JOIN pg_roles o ON o.oid = v.relowner
"""

# Built-in roles that reach table data around privileges and row-level security.
ESCALATING_ROLES = ("pg_execute_server_program", "pg_read_server_files", "pg_write_server_files")

ROLES_SQL = """
SELECT r.rolname, r.rolsuper, r.rolbypassrls,
       ARRAY(SELECT o.rolname FROM pg_roles o
             WHERE o.oid <> r.oid
               AND (o.rolsuper OR o.rolbypassrls OR o.rolcreaterole OR o.rolreplication
                    OR o.rolname = ANY(%(owners)s) OR o.rolname = ANY(%(escalating)s))
               AND pg_has_role(r.oid, o.oid, 'MEMBER') ORDER BY 1)
       || CASE WHEN r.rolcreaterole THEN ARRAY['any role (CREATEROLE)']::name[] ELSE '{}' END
       || CASE WHEN r.rolreplication THEN ARRAY['a WAL reader (REPLICATION)']::name[] ELSE '{}' END,
       ARRAY(SELECT c.relname FROM unnest(%(children)s::oid[]) AS u(oid) JOIN pg_class c ON c.oid = u.oid
             WHERE has_any_column_privilege(r.oid, u.oid, 'SELECT') ORDER BY 1),
       ARRAY(SELECT c.relname FROM unnest(%(all)s::oid[]) AS u(oid) JOIN pg_class c ON c.oid = u.oid
             WHERE has_column_privilege(r.oid, u.oid, 'transcript', 'SELECT') ORDER BY 1),
       COALESCE(has_any_column_privilege(r.oid, to_regclass(%(quarantine)s), 'SELECT'), false)
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
    kind: str  # parent | partition | default | detached | side (a restore --into table)
    owner: str
    rls: bool
    force: bool
    policies: tuple[PolicyFact, ...] = ()
    grantees: tuple[str, ...] = ()  # roles other than the owner holding any table or column privilege
    schema: str = "public"

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
    reads_quarantine: bool = False  # callvault.quarantine holds rejected rows of every tenant, raw


@dataclass(frozen=True)
class Grant:
    role: str  # or PUBLIC
    privilege: str  # SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER
    bypasses: bool  # superuser or BYPASSRLS


@dataclass(frozen=True)
class ViewFact:
    name: str
    owner: str  # superuser or BYPASSRLS (only those are listed)
    security_invoker: bool
    granted: bool  # someone besides its owner may select from it, or from a view built on it


def bypassing_views(rows: list[tuple[Any, ...]]) -> tuple[ViewFact, ...]:
    """Views owned by a role that escapes RLS, each marked granted when it, or any view reading it
    (transitively), holds a grant. ``rows``: (view, source, name, owner, bypasses, invoker, granted). Pure."""
    info = {r[0]: r[2:] for r in rows}
    readers: dict[Any, set[Any]] = {}
    for view, source, *_ in rows:
        readers.setdefault(source, set()).add(view)

    def exposed(view: Any, seen: set[Any]) -> bool:
        if info[view][4]:
            return True
        seen.add(view)
        return any(exposed(r, seen) for r in readers.get(view, ()) if r not in seen)

    return tuple(
        sorted(
            (ViewFact(name, owner, invoker, exposed(view, set())) for view, (name, owner, bypasses, invoker, _) in
             info.items() if bypasses),
            key=lambda v: v.name,
        )
    )  # fmt: skip


@dataclass(frozen=True)
class Facts:
    parent: RelFact
    children: tuple[RelFact, ...]
    roles: tuple[RoleFact, ...]
    default_grantees: tuple[str, ...] = ()  # ALTER DEFAULT PRIVILEGES grants on new tables
    parent_grants: tuple[Grant, ...] = ()
    views: tuple[ViewFact, ...] = ()


def side_mark(settings: Settings) -> str:
    """The comment ``restore --into`` leaves on a side table, so every later audit and maintenance
    run holds it to the partitions' rules too."""
    return f"callvault: restored from the archive of {settings.qualified}"


def read_facts(conn: Conn, settings: Settings) -> Facts:
    """The parent, its partitions, detached tables awaiting archive, and side tables carrying
    :func:`side_mark`, with their policies and grants; the configured roles; views over the table."""
    detached = [sql.Identifier(settings.schema, name).as_string() for name, _ in catalog.list_detached(conn, settings)]
    params = {"parent": catalog.parent_regclass(settings), "detached": detached, "mark": side_mark(settings)}
    rows = conn.execute(RELS_SQL, params).fetchall()
    oids = [r[0] for r in rows]
    policies: dict[int, list[PolicyFact]] = {oid: [] for oid in oids}
    for relid, *values in conn.execute(POLICIES_SQL, (oids,)).fetchall():
        policies[relid].append(PolicyFact(*values))
    rels = [
        RelFact(name=name, kind=kind, owner=owner, rls=rls, force=force, policies=tuple(policies[oid]),
                grantees=tuple(sorted(grantees)), schema=schema)
        for oid, schema, name, kind, owner, rls, force, grantees in rows
    ]  # fmt: skip
    child_oids = [oid for oid, rel in zip(oids, rels, strict=True) if rel.kind != "parent"]
    wanted = settings.roles.as_dict()
    found = {
        name: RoleFact(name, "", True, su, bypass, tuple(become), tuple(children), tuple(transcript), quarantine)
        for name, su, bypass, become, children, transcript, quarantine in conn.execute(
            ROLES_SQL,
            {"owners": sorted({r.owner for r in rels}), "children": child_oids, "all": oids,
             "names": list(wanted.values()), "escalating": list(ESCALATING_ROLES),
             "quarantine": sql.Identifier(META_SCHEMA, "quarantine").as_string()},
        ).fetchall()
    }  # fmt: skip
    roles = tuple(
        RoleFact(**{**found[name].__dict__, "kind": kind}) if name in found else RoleFact(name, kind, exists=False)
        for kind, name in wanted.items()
    )
    defaults = tuple(r[0] for r in conn.execute(DEFAULT_ACL_SQL, (settings.schema,)).fetchall())
    grants = tuple(Grant(*r) for r in conn.execute(PARENT_GRANTS_SQL, (catalog.parent_regclass(settings),)))
    views = bypassing_views(conn.execute(VIEWS_SQL, (oids,)).fetchall())
    return Facts(rels[0], tuple(rels[1:]), roles, defaults, grants, views)
