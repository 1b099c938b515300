"""Who a call belongs to: the *subject* (the caller), a key path in ``metadata`` such as ``caller`` or
``caller.number``, set once per table (``callvault privacy subject --metadata-key caller``).

Setting it builds an index on ``(tenant_id, metadata #>> path)`` on the parent, which every partition,
today's and tomorrow's, carries: one subject's hot calls are found by an index probe pinned to the tenant,
never a scan of the tenant's rows. In the archive the same path is read with DuckDB's
``json_extract_string`` over only that tenant's objects (see :mod:`callvault.privacy.erase`)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from psycopg import sql

from callvault import catalog, schema
from callvault.config import META_SCHEMA, Settings
from callvault.db import Conn
from callvault.errors import InvalidSetting, NotInitialised

_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class Subject:
    """The subject's key path in ``metadata`` (pure)."""

    path: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Subject:
        """``caller`` or ``caller.number`` (with or without a leading ``metadata.``); InvalidSetting otherwise."""
        raw = text.strip().removeprefix("metadata.")
        parts = tuple(raw.split("."))
        if not raw or not all(_PART.match(p) for p in parts) or len(parts) > 8:
            raise InvalidSetting(
                f"--metadata-key {text!r} is not a metadata key path: give the key holding the caller, e.g. "
                "--metadata-key caller or --metadata-key caller.number (letters, digits, _ and -, dot-separated)"
            )
        return cls(parts)

    @property
    def name(self) -> str:
        """``metadata.caller``: how the subject is shown."""
        return "metadata." + ".".join(self.path)

    def pg(self) -> sql.Composed:
        """The subject as a Postgres expression (the index's expression, spelled the same everywhere)."""
        return sql.SQL("(metadata #>> {})").format(sql.Literal("{" + ",".join(self.path) + "}"))

    def duck(self) -> str:
        """The subject as a DuckDB expression over an archived object (key parts are checked: no quoting issue)."""
        return "json_extract_string(metadata, '$." + ".".join(f'"{p}"' for p in self.path) + "')"

    def index_name(self, settings: Settings) -> str:
        """The subject index's name on the parent (its partitions' indexes are named by Postgres)."""
        return f"{settings.table[:40]}_subject_idx"


def ensure(conn: Conn) -> None:
    """Create the privacy tables where an older install lacks them (autocommit connection)."""
    catalog.ensure_meta(conn, schema.PRIVACY_TABLES, schema.privacy_sql())


def load(conn: Conn, settings: Settings) -> Subject | None:
    """The table's subject, or None when none is set (or the install predates subjects: reading never
    creates tables, so the archive asks this as a role that may not)."""
    if not catalog.meta_table_exists(conn, "privacy_subject"):
        return None
    row = conn.execute(
        sql.SQL("SELECT path FROM {} WHERE parent_table = %s").format(sql.Identifier(META_SCHEMA, "privacy_subject")),
        (settings.qualified,),
    ).fetchone()
    return Subject(tuple(row[0])) if row else None


def require(conn: Conn, settings: Settings) -> Subject:
    """The table's subject, or InvalidSetting saying how to set one."""
    subject = load(conn, settings)
    if subject is None:
        raise InvalidSetting(
            f"{settings.qualified} has no subject set: say which metadata key holds the caller first, e.g. "
            "`callvault privacy subject --metadata-key caller`"
        )
    return subject


def set_subject(conn: Conn, settings: Settings, subject: Subject) -> str:
    """Record the subject and build its index on the parent (every partition gets it); returns the index
    name. Re-setting the same subject is a no-op; another one replaces the index."""
    if not catalog.table_exists(conn, settings):
        raise NotInitialised(f"{settings.qualified} is not set up: run `callvault init` first")
    ensure(conn)
    name = subject.index_name(settings)
    old = load(conn, settings)
    with conn.transaction():
        if old is not None and old != subject:
            conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(settings.schema, name)))
        conn.execute(
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (tenant_id, {})").format(
                sql.Identifier(name), sql.Identifier(settings.schema, settings.table), subject.pg()
            )
        )
        # the archive's filter key is made here, committed with the subject: made lazily inside an archive
        # step, a rollback of that step (a lock timeout, retried) lost it while filters keyed by it stayed
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (parent_table, path, index_name, bloom_key) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (parent_table) DO UPDATE SET path = excluded.path, index_name = excluded.index_name, "
                "set_at = now(), bloom_key = coalesce({}.bloom_key, excluded.bloom_key)"
            ).format(sql.Identifier(META_SCHEMA, "privacy_subject"), sql.Identifier("privacy_subject")),
            (settings.qualified, list(subject.path), name, os.urandom(32)),
        )
    return name
