"""``callvault init --roles``: create the four roles (see :class:`callvault.config.Roles`) and grant
each exactly what it needs. Idempotent like the rest of ``init``: decided from what exists.

Why these attributes (docs/tenancy.md has the long form):

* no application role (``app``, ``tenant_writer``) is superuser, owns a table, or has BYPASSRLS, so
  the tenant policy binds it wherever it looks;
* the ``ingest`` role has BYPASSRLS because Postgres refuses ``COPY FROM`` for any role row-level
  security applies to, and COPY is what makes the writer fast; it holds INSERT only, so it still
  cannot read a transcript;
* the ``owner`` has BYPASSRLS because archiving, verifying and restoring read every tenant's rows,
  and with FORCE ROW LEVEL SECURITY even a table's owner is otherwise filtered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from psycopg import sql

from callvault import catalog
from callvault.config import Settings
from callvault.db import Conn
from callvault.errors import InvalidSetting
from callvault.partman import PartmanInfo
from callvault.tenancy import policy
from callvault.tenancy.policy import ROLE_ATTRIBUTES, Statement

ROLE_STATE_SQL = """
SELECT rolname, rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls
FROM pg_roles WHERE rolname = ANY(%s)
"""
SEQUENCE_SQL = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = pg_get_serial_sequence(%s, 'id')::regclass
"""
GRANTS_DONE_SQL = """
SELECT pg_get_userbyid(c.relowner) = %(owner)s
   AND has_table_privilege(%(app)s, c.oid, 'SELECT')
   AND has_table_privilege(%(ingest)s, c.oid, 'INSERT')
   AND has_table_privilege(%(writer)s, c.oid, 'INSERT')
   AND has_sequence_privilege(%(ingest)s, %(seq)s, 'USAGE')
   AND has_sequence_privilege(%(writer)s, %(seq)s, 'USAGE')
   AND has_function_privilege(%(ingest)s, %(qfn)s, 'EXECUTE')
   AND has_table_privilege(%(owner)s, %(pmcfg)s, 'UPDATE')
   AND has_schema_privilege(%(owner)s, %(schema)s, 'CREATE')
FROM pg_class c WHERE c.oid = %(parent)s::regclass
"""


class _Step(Protocol):
    @property
    def statement(self) -> sql.Composed: ...


def _wanted(kind: str) -> tuple[bool, bool, bool, bool, bool, bool]:
    attrs = ROLE_ATTRIBUTES[kind]
    return ("LOGIN" in attrs, False, False, False, False, "BYPASSRLS" in attrs)


def _role_statements(conn: Conn | None, settings: Settings) -> list[Statement]:
    names = settings.roles.as_dict()
    state = {}
    if conn is not None:
        state = {r[0]: tuple(r[1:]) for r in conn.execute(ROLE_STATE_SQL, (list(names.values()),)).fetchall()}
    out = []
    for kind, name in names.items():
        if name not in state:
            out.append(Statement(f"create {kind} role {name}", policy.role_sql(name, kind, exists=False)))
        elif state[name] != _wanted(kind):
            out.append(Statement(f"set attributes of {kind} role {name}", policy.role_sql(name, kind, exists=True)))
    return out


def _sequence(conn: Conn | None, settings: Settings) -> sql.Identifier:
    if conn is not None and catalog.table_exists(conn, settings):
        row = conn.execute(SEQUENCE_SQL, (catalog.parent_regclass(settings),)).fetchone()
        if row:
            return sql.Identifier(row[0], row[1])
    return sql.Identifier(settings.schema, f"{settings.table}_id_seq")  # what bigserial names it


def _grants_done(conn: Conn, settings: Settings, seq: sql.Identifier, pm: PartmanInfo) -> bool:
    r = settings.roles
    row = conn.execute(GRANTS_DONE_SQL, {
        "owner": r.owner, "app": r.app, "ingest": r.ingest, "writer": r.tenant_writer,
        "seq": seq.as_string(conn), "qfn": "callvault.quarantine_once(text,text,text)",
        "pmcfg": sql.Identifier(pm.schema, "part_config").as_string(conn), "schema": settings.schema,
        "parent": catalog.parent_regclass(settings),
    }).fetchone()  # fmt: skip
    return bool(row and row[0])


def role_steps(conn: Conn | None, settings: Settings, pm: PartmanInfo, *, fresh: bool) -> list[Statement]:
    """Roles to create or correct, then the grants (skipped when every grant is already in place).
    ``fresh``: the table or bookkeeping is created by this same ``init``, so grants are needed."""
    roles = _role_statements(conn, settings)
    seq = _sequence(conn, settings)
    if conn is not None and not fresh and not roles and _grants_done(conn, settings, seq, pm):
        return []
    return roles + policy.grant_statements(settings, seq, pm.schema)


def require_role_admin(conn: Conn, steps: Sequence[_Step]) -> None:
    """Creating BYPASSRLS roles (or changing that attribute) needs a superuser: say so up front."""
    if not any(s.statement.as_string(conn).startswith(("CREATE ROLE", "ALTER ROLE")) for s in steps):
        return
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    if not (row and row[0]):
        raise InvalidSetting(
            "`init --roles` creates roles with BYPASSRLS, which only a superuser may do: run it once as a "
            "superuser, or create the roles yourself (attributes in docs/tenancy.md) and run it again"
        )
