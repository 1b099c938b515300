"""Tenant isolation as pure SQL builders: the policy, RLS switches, roles and their grants.

The tenant of a transaction is the transaction-local setting ``app.tenant_id`` (``set_config(...,
true)`` / ``SET LOCAL``, so it ends with the transaction: safe with pools and PgBouncer in
transaction mode). ``NULLIF(..., '')`` makes both "never set" (NULL) and "set earlier in this
session, now reset" (Postgres then returns ``''``, not NULL) compare as NULL: no rows, never all
rows. A malformed value fails the ``::uuid`` cast: an error, never a row.

Nothing here touches a connection; identifiers are composed with :mod:`psycopg.sql`.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from callvault.config import META_SCHEMA, Roles, Settings

TENANT_SETTING = "app.tenant_id"
POLICY_NAME = "callvault_tenant_isolation"
TENANT_EXPR = "tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid"
# The same expression as Postgres stores and prints it (pg_get_expr on PostgreSQL 15); audit
# compares every policy against it, so a policy edited by hand (e.g. to ``true``) is caught.
TENANT_EXPR_STORED = "(tenant_id = (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid)"
SET_TENANT_SQL = "SELECT set_config('app.tenant_id', %s, true)"
# On Citus the coordinator sends a transaction's settings to the workers only as ``SET LOCAL`` with
# ``citus.propagate_set_commands = 'local'`` (set_config() and session SETs stay on the coordinator,
# and the policy on the shards sees no tenant). The two statements below work on both engines (on plain
# PostgreSQL the citus.* name is an inert placeholder); the value is a validated UUID text, quoted.
PROPAGATE_SQL = "SET LOCAL citus.propagate_set_commands TO 'local'"


def set_tenant_sql(value: str) -> sql.Composed:
    """``SET LOCAL app.tenant_id TO '<uuid>'`` (``''``: no tenant)."""
    return sql.SQL("SET LOCAL app.tenant_id TO {}").format(sql.Literal(value))


# Role attributes by kind. BYPASSRLS only where Postgres leaves no choice (see config.Roles).
ROLE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "owner": ("LOGIN", "NOSUPERUSER", "NOCREATEDB", "NOCREATEROLE", "NOREPLICATION", "BYPASSRLS"),
    "ingest": ("LOGIN", "NOSUPERUSER", "NOCREATEDB", "NOCREATEROLE", "NOREPLICATION", "BYPASSRLS"),
    "app": ("LOGIN", "NOSUPERUSER", "NOCREATEDB", "NOCREATEROLE", "NOREPLICATION", "NOBYPASSRLS"),
    "tenant_writer": ("LOGIN", "NOSUPERUSER", "NOCREATEDB", "NOCREATEROLE", "NOREPLICATION", "NOBYPASSRLS"),
}


@dataclass(frozen=True)
class Statement:
    what: str
    statement: sql.Composed


def table(settings: Settings, name: str | None = None) -> sql.Identifier:
    """The parent, or one of its (attached or detached) partitions, which live in the same schema."""
    return sql.Identifier(settings.schema, name or settings.table)


def enable_rls_sql(rel: sql.Identifier) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(rel)


def force_rls_sql(rel: sql.Identifier) -> sql.Composed:
    """FORCE: the table's owner is subject to the policy too (unless it has BYPASSRLS)."""
    return sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(rel)


def create_policy_sql(rel: sql.Identifier) -> sql.Composed:
    expr = sql.SQL(TENANT_EXPR)
    return sql.SQL("CREATE POLICY {} ON {} AS PERMISSIVE FOR ALL TO PUBLIC USING ({}) WITH CHECK ({})").format(
        sql.Identifier(POLICY_NAME), rel, expr, expr
    )


def drop_policy_sql(name: str, rel: sql.Identifier) -> sql.Composed:
    return sql.SQL("DROP POLICY {} ON {}").format(sql.Identifier(name), rel)


def owner_sql(rel: sql.Identifier, role: str) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} OWNER TO {}").format(rel, sql.Identifier(role))


def grantee(name: str) -> sql.Composable:
    return sql.SQL("PUBLIC") if name == "PUBLIC" else sql.Identifier(name)


def revoke_all_sql(rel: sql.Identifier, who: str) -> sql.Composed:
    """Also revokes column privileges (REVOKE ALL ON TABLE covers every column), and with CASCADE what
    ``who`` granted onwards WITH GRANT OPTION (otherwise the REVOKE fails)."""
    return sql.SQL("REVOKE ALL ON TABLE {} FROM {} CASCADE").format(rel, grantee(who))


def role_sql(name: str, kind: str, *, exists: bool) -> sql.Composed:
    verb = "ALTER ROLE {} WITH " if exists else "CREATE ROLE {} WITH "
    return sql.SQL(verb + " ".join(ROLE_ATTRIBUTES[kind])).format(sql.Identifier(name))


def grant_statements(settings: Settings, sequence: sql.Identifier, partman_schema: str) -> list[Statement]:
    """Least privilege for the four roles. Children get nothing: the parent is the only way in."""
    r: Roles = settings.roles
    ident = sql.Identifier
    parent = table(settings)
    schema, meta, pm = ident(settings.schema), ident(META_SCHEMA), ident(partman_schema)
    writers = sql.SQL(", ").join([ident(r.ingest), ident(r.tenant_writer)])
    users = sql.SQL(", ").join([ident(r.app), ident(r.ingest), ident(r.tenant_writer)])

    def s(what: str, text: str, **parts: sql.Composable) -> Statement:
        return Statement(what, sql.SQL(text).format(**parts))

    owner = ident(r.owner)
    return [
        s("the owner role owns the table", "ALTER TABLE {t} OWNER TO {o}", t=parent, o=owner),
        s("nobody reads the table by default", "REVOKE ALL ON TABLE {t} FROM PUBLIC", t=parent),
        s("the owner creates partitions in the schema", "GRANT USAGE, CREATE ON SCHEMA {s} TO {o}", s=schema, o=owner),
        s("application roles see the schema", "GRANT USAGE ON SCHEMA {s} TO {u}", s=schema, u=users),
        s("the app role reads (tenant-scoped)", "GRANT SELECT ON TABLE {t} TO {a}", t=parent, a=ident(r.app)),
        s("writers insert, never read", "GRANT INSERT ON TABLE {t} TO {w}", t=parent, w=writers),
        s("writers draw ids", "GRANT USAGE ON SEQUENCE {q} TO {w}", q=sequence, w=writers),
        s("the owner runs callvault bookkeeping", "GRANT USAGE, CREATE ON SCHEMA {m} TO {o}", m=meta, o=owner),
        s("the owner writes bookkeeping tables", "GRANT ALL ON ALL TABLES IN SCHEMA {m} TO {o}", m=meta, o=owner),
        s("the owner runs maintenance", "GRANT EXECUTE ON ALL ROUTINES IN SCHEMA {m} TO {o}", m=meta, o=owner),
        s("the trusted writer sees bookkeeping", "GRANT USAGE ON SCHEMA {m} TO {i}", m=meta, i=ident(r.ingest)),
        s("the trusted writer quarantines rows", "GRANT INSERT ON TABLE {q} TO {i}",
          q=ident(META_SCHEMA, "quarantine"), i=ident(r.ingest)),
        s("the trusted writer quarantines re-sent rows once",
          "GRANT EXECUTE ON FUNCTION {f}(text, text, text) TO {i}",
          f=ident(META_SCHEMA, "quarantine_once"), i=ident(r.ingest)),
        s("the app role sees the usage rollup", "GRANT USAGE ON SCHEMA {m} TO {a}", m=meta, a=ident(r.app)),
        s("the app role reads usage (tenant-scoped)", "GRANT SELECT ON TABLE {u}, {d} TO {a}",
          u=ident(META_SCHEMA, "usage"), d=ident(META_SCHEMA, "usage_dimension"), a=ident(r.app)),
        s("the owner uses pg_partman", "GRANT USAGE ON SCHEMA {p} TO {o}", p=pm, o=owner),
        s("the owner updates pg_partman's config", "GRANT ALL ON ALL TABLES IN SCHEMA {p} TO {o}", p=pm, o=owner),
        s("the owner draws pg_partman ids", "GRANT ALL ON ALL SEQUENCES IN SCHEMA {p} TO {o}", p=pm, o=owner),
        s("the owner runs pg_partman", "GRANT EXECUTE ON ALL ROUTINES IN SCHEMA {p} TO {o}", p=pm, o=owner),
    ]  # fmt: skip
