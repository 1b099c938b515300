"""A platform's own columns on the managed table ("extras"): list them, add one under the lock budget,
index one without blocking writes.

The table itself is the one declaration: every column of the parent that is not one of the seed's
(:data:`callvault.columns.COLUMNS`) is an extra, of one of the types in
:data:`callvault.columns.EXTRA_TYPES`. The writers COPY them, the Reader returns them, the archive writes
them (an object archived before a column existed simply lacks it; every reader gives NULL there), restore
loads them, ``mirror --columns`` can name them. Adding one here (``callvault columns add``) is the
supported way: a nullable column without a default is a catalog-only change (no rewrite), taken under
``lock_timeout`` with retries; its index is built ``CONCURRENTLY`` partition by partition and attached to
an index on the parent, which every partition made later inherits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import psycopg
from psycopg import sql

from callvault import catalog, columns
from callvault.config import Settings
from callvault.db import Conn
from callvault.errors import InvalidSetting, NotInitialised

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_TYPE = re.compile(r"^[a-z][a-z ]{1,30}(\(\d{1,4}(,\s*\d{1,4})?\))?$")
ALIASES = {"int": "integer", "int4": "integer", "int8": "bigint", "int2": "smallint", "bool": "boolean",
           "float8": "double precision", "float4": "real", "varchar": "character varying",
           "timestamptz": "timestamp with time zone", "decimal": "numeric"}  # fmt: skip


@dataclass(frozen=True)
class ExtraColumn:
    """One extra column as ``columns list`` shows it."""

    name: str
    type: str
    not_null: bool
    indexed: bool

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "type": self.type, "not_null": self.not_null, "indexed": self.indexed}


def check_name(name: str) -> str:
    """A new column's name: lower-case letters, digits and ``_``, not one of the seed's (InvalidSetting)."""
    if not _NAME.match(name or ""):
        raise InvalidSetting(
            f"column name {name!r} is not accepted: use lower-case letters, digits and _ (at most 63, not starting "
            "with a digit), e.g. agent_id"
        )
    if name in columns.NAMES:
        raise InvalidSetting(f"column {name} is one of callvault's own columns: pick another name")
    return name


def check_type(text: str) -> str:
    """A type as Postgres spells it (aliases like ``int``/``varchar(40)`` accepted), one callvault carries."""
    raw = " ".join((text or "").strip().lower().split())
    base, paren, rest = raw.partition("(")
    base = ALIASES.get(base.strip(), base.strip())
    spelled = base + (("(" + rest.replace(" ", "")) if paren else "")
    if not _TYPE.match(spelled) or base not in columns.EXTRA_TYPES:
        raise InvalidSetting(
            f"type {text!r} is not one callvault carries through the writer, the archive and restore: use one of "
            f"{columns.EXTRA_TYPE_LIST} (e.g. text, integer, varchar(40), numeric(12,2))"
        )
    return spelled


def _indexed(conn: Conn, settings: Settings) -> set[str]:
    """Extras that lead an index after tenant_id on the parent (the ones a tenant filter can use)."""
    rows = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[1] "
        "WHERE i.indrelid = to_regclass(%s) AND i.indnatts >= 2",
        (catalog.parent_regclass(settings),),
    ).fetchall()
    return {str(r[0]) for r in rows}


def list_extras(conn: Conn, settings: Settings) -> list[ExtraColumn]:
    if not catalog.table_exists(conn, settings):
        raise NotInitialised(f"{settings.qualified} is not set up: run `callvault init` first")
    shape = catalog.table_shape(conn, settings)
    indexed = _indexed(conn, settings)
    return [ExtraColumn(c.name, c.pg, c.not_null, c.name in indexed) for c in shape.extras]


def index_name(settings: Settings, name: str) -> str:
    return f"{settings.table[:30]}_{name[:20]}_idx"


def add_column(conn: Conn, settings: Settings, name: str, type_text: str, *, index: bool = False) -> ExtraColumn:
    """Add an extra column (nullable, no default: no table rewrite) under the lock budget, and with
    ``index`` its ``(tenant_id, name, started_at)`` index, built without blocking writes. Adding a
    column that exists with the same type only builds the index if asked (idempotent). ``conn``:
    autocommit."""
    from callvault.maintain import retry_locks

    check_name(name)
    spelled = check_type(type_text)
    if not catalog.table_exists(conn, settings):
        raise NotInitialised(f"{settings.qualified} is not set up: run `callvault init` first")
    table = sql.Identifier(settings.schema, settings.table)
    have = catalog.table_shape(conn, settings).find(name)
    if have is None:

        def alter() -> None:
            with conn.transaction():
                conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{settings.lock_timeout_ms}ms",))
                conn.execute(
                    sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(table, sql.Identifier(name), sql.SQL(spelled))
                )
                catalog.table_shape(conn, settings)  # a type the writers cannot carry rolls back here

        try:
            retry_locks(alter, f"adding column {name} to {settings.qualified}")
        except psycopg.errors.UndefinedObject as exc:
            raise InvalidSetting(f"type {type_text!r}: {exc.diag.message_primary}; use e.g. text or integer") from None
        except psycopg.errors.InvalidParameterValue as exc:
            raise InvalidSetting(f"type {type_text!r}: {exc.diag.message_primary}") from None
        have = catalog.table_shape(conn, settings).find(name)
        assert have is not None
    elif columns.base_type(have.pg) != columns.base_type(spelled):
        raise InvalidSetting(
            f"column {name} already exists on {settings.qualified} as {have.pg}, not {spelled}: pick another name"
        )
    if index:
        build_index(conn, settings, name)
    return ExtraColumn(have.name, have.pg, have.not_null, name in _indexed(conn, settings))


def build_index(conn: Conn, settings: Settings, name: str) -> str:
    """``(tenant_id, name, started_at)`` on every partition ``CONCURRENTLY`` (writes go on), attached to
    an index made ``ON ONLY`` the parent; partitions made later get it from the parent."""
    from callvault.indexes import build_on_every_partition

    cols = sql.SQL("(tenant_id, {}, started_at)").format(sql.Identifier(name))
    return build_on_every_partition(conn, settings, index_name(settings, name), cols, f"{name[:20]}_idx")
