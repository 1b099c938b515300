"""``callvault search index`` / ``search status``: the transcript search indexes (:mod:`callvault.search`
says what they serve) on every partition, built without blocking writes (:mod:`callvault.indexes`)."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from callvault import catalog
from callvault.config import Settings
from callvault.db import Conn
from callvault.errors import InvalidSetting, NotInitialised
from callvault.search import (
    DEFAULT_LANGUAGE,
    LANGUAGE_NAME,
    LANGUAGE_SQL,
    LANGUAGE_TAG,
    PHRASE,
    WORDS,
    fts_expression,
    index_names,
    language_from,
    language_param,
)


def language_of(conn: Conn, settings: Settings) -> str | None:
    """The language of the table's full-text index, or None when there is none."""
    return language_from(conn.execute(LANGUAGE_SQL, language_param(settings), prepare=False).fetchone())


@dataclass
class IndexReport:
    """What ``callvault search index`` built, or ``search status`` found."""

    table: str
    language: str | None
    indexes: list[dict[str, object]]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: ``{"table", "language", "indexes": [{"mode", "index", "exists", "valid", "bytes"}]}``."""
        return {"table": self.table, "language": self.language, "indexes": self.indexes}


def _check_language(conn: Conn, language: str) -> None:
    if not LANGUAGE_NAME.match(language):
        raise InvalidSetting(f"--language {language!r} is not a text search configuration name (e.g. simple, english)")
    row = conn.execute("SELECT EXISTS (SELECT FROM pg_ts_config WHERE cfgname = %s)", (language,)).fetchone()
    if not (row and row[0]):
        known = [r[0] for r in conn.execute("SELECT cfgname FROM pg_ts_config ORDER BY 1").fetchall()]
        raise InvalidSetting(
            f"--language {language!r} is not a text search configuration of this server: use one of "
            f"{', '.join(map(str, known))} (simple keeps words as they are, for mixed languages)"
        )


def _trgm_schema(conn: Conn) -> str:
    """The schema pg_trgm is in, creating the extension (it ships with PostgreSQL) when missing."""
    row = conn.execute(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_trgm'"
    ).fetchone()
    if row is None:
        from callvault.errors import ExtensionMissing

        avail = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'").fetchone()
        if avail is None:
            raise ExtensionMissing(
                "pg_trgm is not installed on the server (phrase search needs it): install PostgreSQL's contrib "
                "modules (Debian: they come with postgresql-15), or search with --words only"
            )
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        row = conn.execute(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
            "WHERE e.extname = 'pg_trgm'"
        ).fetchone()
    assert row is not None
    return str(row[0])


def build_indexes(
    conn: Conn, settings: Settings, *, language: str = DEFAULT_LANGUAGE, phrase: bool = True, words: bool = True
) -> IndexReport:
    """Build the search indexes on every partition without blocking writes (``conn`` in autocommit);
    a full-text index of another language is replaced. Resumable: run again after an interruption."""
    from callvault.indexes import build_on_every_partition

    if not catalog.table_exists(conn, settings):
        raise NotInitialised(f"{settings.qualified} is not set up: run `callvault init` first")
    from callvault import citus

    citus.refuse(conn, settings, "callvault search index", "GIN indexes are built per shard by Citus itself")
    names = index_names(settings)
    if words:
        _check_language(conn, language)
    if phrase:
        trgm = _trgm_schema(conn)
        build_on_every_partition(
            conn, settings, names[PHRASE],
            sql.SQL("USING gin (transcript {})").format(sql.Identifier(trgm, "gin_trgm_ops")), "trgm_idx",
        )  # fmt: skip
    if words:
        old = language_of(conn, settings)
        if old is not None and old != language:  # another language's index: its expression differs
            conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(settings.schema, names[WORDS])))
        build_on_every_partition(
            conn, settings, names[WORDS], sql.SQL("USING gin ({})").format(fts_expression(language)), "fts_idx"
        )
        conn.execute(
            sql.SQL("COMMENT ON INDEX {} IS {}").format(
                sql.Identifier(settings.schema, names[WORDS]), sql.Literal(LANGUAGE_TAG + language)
            )
        )
    return index_status(conn, settings)


def index_status(conn: Conn, settings: Settings) -> IndexReport:
    """The search indexes of the table: valid (built on every partition), size."""
    out = []
    for mode, name in index_names(settings).items():
        row = conn.execute(
            "SELECT i.indisvalid, (SELECT coalesce(sum(pg_relation_size(t.relid)), 0)::bigint "
            "FROM pg_partition_tree(i.indexrelid) t) FROM pg_index i WHERE i.indexrelid = to_regclass(%s)",
            (sql.Identifier(settings.schema, name).as_string(conn),),
        ).fetchone()
        out.append({"mode": mode, "index": name, "exists": row is not None, "valid": bool(row and row[0]),
                    "bytes": int(row[1]) if row else 0})  # fmt: skip
    return IndexReport(settings.qualified, language_of(conn, settings), out)
