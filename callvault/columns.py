"""The call_logs columns, spelled out once. Everything that lists them is generated from :data:`COLUMNS`:
the table DDL and shape check (:mod:`callvault.schema`), the writer's COPY columns and stage table
(:mod:`callvault.ingest`), the archive's Arrow schema, manifest types, CSV reader types and restore
stage (:mod:`callvault.archive`), and the Reader's SELECT list (:mod:`callvault.query`).

Order matters: it is the table's column order and the COPY order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import sql


@dataclass(frozen=True)
class Column:
    name: str
    ddl: str  # as written in CREATE TABLE (with NOT NULL / DEFAULT)
    pg: str  # as format_type() prints it (the shape check)
    not_null: bool
    manifest: str  # the archive manifest's type name (Parquet/Arrow)
    duck: str  # DuckDB type when reading the archive's CSV
    written: bool = True  # set by the writer (id is the server's)


COLUMNS: tuple[Column, ...] = (
    Column("id", "bigserial NOT NULL", "bigint", True, "int64", "BIGINT", written=False),
    # ids are plain strings in the archive: Spark (4.x) refuses Parquet's UUID logical type
    Column("tenant_id", "uuid NOT NULL", "uuid", True, "string", "UUID"),
    Column("call_id", "uuid NOT NULL", "uuid", True, "string", "UUID"),
    Column("started_at", "timestamptz NOT NULL", "timestamp with time zone", True, "timestamp[us, UTC]", "TIMESTAMPTZ"),
    Column("ended_at", "timestamptz", "timestamp with time zone", False, "timestamp[us, UTC]", "TIMESTAMPTZ"),
    Column("duration_sec", "integer", "integer", False, "int32", "INTEGER"),
    Column("transcript", "text", "text", False, "string", "VARCHAR"),
    Column("metadata", "jsonb DEFAULT '{}'::jsonb", "jsonb", False, "json", "VARCHAR"),
)
NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
WRITTEN: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.written)  # what a producer sends


def ddl_lines() -> str:
    """The column part of CREATE TABLE (psycopg.sql template text: braces doubled)."""
    width = max(len(n) for n in NAMES) + 1
    return ",\n".join(f"    {c.name:<{width}}{c.ddl}" for c in COLUMNS).replace("{", "{{").replace("}", "}}")


def column_list(names: tuple[str, ...] = NAMES) -> sql.Composed:
    return sql.SQL(", ").join(map(sql.Identifier, names))


def stage_ddl(table: sql.Identifier, names: tuple[str, ...], *, json_as_text: bool, on_commit: str) -> sql.Composed:
    """``CREATE TEMP TABLE`` with ``names`` typed like the table (no constraints). ``json_as_text``:
    metadata as text (restore casts it after checking). ``on_commit``: DROP or DELETE ROWS."""
    types = {c.name: c.ddl.split()[0].replace("bigserial", "bigint") for c in COLUMNS}
    if json_as_text:
        types["metadata"] = "text"
    cols = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(types[n])) for n in names)
    return sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ({}) ON COMMIT {}").format(table, cols, sql.SQL(on_commit))


def manifest_types() -> dict[str, str]:
    return {c.name: c.manifest for c in COLUMNS}


def duck_csv_columns() -> str:
    """DuckDB ``read_csv(columns = {...})`` for the archive's CSV."""
    return "{" + ", ".join(f"'{c.name}': '{c.duck}'" for c in COLUMNS) + "}"


def arrow_schema() -> Any:
    """The archive's Parquet schema: ids as strings, jsonb as Parquet's JSON type, timestamptz as µs UTC.
    (Archives of schema 1 hold the ids as Parquet's UUID type; readers accept both.)"""
    import pyarrow as pa

    ts = pa.timestamp("us", tz="UTC")
    arrow = {
        "int64": pa.int64(), "uuid": pa.uuid(), "timestamp[us, UTC]": ts, "int32": pa.int32(),
        "string": pa.string(), "json": pa.json_(pa.string()),
    }  # fmt: skip
    return pa.schema([pa.field(c.name, arrow[c.manifest], nullable=not c.not_null) for c in COLUMNS])
