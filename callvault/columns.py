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
    copy: str = ""  # binary COPY type name (psycopg ``set_types``); extras only
    extra: bool = False  # a platform's own column (not the seed's)


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


# A platform's own columns ("extras"): the types callvault carries through every tier, by the name
# format_type() prints (varchar(n) and numeric(p,s) by their base name). Each: (manifest/Arrow type, DuckDB
# type, binary COPY type). Anything else is refused with this list.
EXTRA_TYPES: dict[str, tuple[str, str, str]] = {
    "text": ("string", "VARCHAR", "text"),
    "character varying": ("string", "VARCHAR", "text"),
    "smallint": ("int16", "SMALLINT", "int2"),
    "integer": ("int32", "INTEGER", "int4"),
    "bigint": ("int64", "BIGINT", "int8"),
    "boolean": ("bool", "BOOLEAN", "bool"),
    "real": ("float32", "FLOAT", "float4"),
    "double precision": ("float64", "DOUBLE", "float8"),
    "numeric": ("decimal", "VARCHAR", "numeric"),
    "date": ("date32", "DATE", "date"),
    "timestamp with time zone": ("timestamp[us, UTC]", "TIMESTAMPTZ", "timestamptz"),
    "uuid": ("string", "UUID", "uuid"),
    "jsonb": ("json", "VARCHAR", "jsonb"),
}
EXTRA_TYPE_LIST = ", ".join(EXTRA_TYPES)


def base_type(pg: str) -> str:
    """``character varying(40)`` -> ``character varying``; ``numeric(12,2)`` -> ``numeric``."""
    return pg.split("(", 1)[0].strip()


def extra_column(name: str, pg: str, not_null: bool = False) -> Column:
    """A platform's own column of type ``pg`` (as format_type() prints it); ValueError when the type is
    not one callvault carries (the message lists those it does)."""
    kind = EXTRA_TYPES.get(base_type(pg))
    if kind is None:
        raise ValueError(f"column {name} has type {pg}, which callvault does not carry: use one of {EXTRA_TYPE_LIST}")
    manifest, duck, copy = kind
    return Column(name, pg, pg, not_null, manifest, duck, copy=copy, extra=True)


@dataclass(frozen=True)
class Shape:
    """A table's columns: the seed's (:data:`COLUMNS`) then its extras, in the table's order. What the
    writers COPY, the Reader selects, the archive writes and restore loads all derive from it."""

    extras: tuple[Column, ...] = ()

    @property
    def columns(self) -> tuple[Column, ...]:
        return COLUMNS + self.extras

    @property
    def names(self) -> tuple[str, ...]:
        return NAMES + tuple(c.name for c in self.extras)

    @property
    def written(self) -> tuple[str, ...]:
        return WRITTEN + tuple(c.name for c in self.extras)

    @property
    def extra_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.extras)

    def find(self, name: str) -> Column | None:
        return next((c for c in self.extras if c.name == name), None)

    def manifest_types(self) -> dict[str, str]:
        return {c.name: c.manifest for c in self.columns}


BASE = Shape()


def shape_of(attributes: list[tuple[str, str, bool]]) -> Shape:
    """The shape from a table's attributes ``(name, format_type, not_null)`` in attnum order (pure).
    The seed's columns are recognised by name; ValueError for an extra of a type callvault does not carry."""
    return Shape(tuple(extra_column(n, t, nn) for n, t, nn in attributes if n not in NAMES))


def ddl_lines() -> str:
    """The column part of CREATE TABLE (psycopg.sql template text: braces doubled)."""
    width = max(len(n) for n in NAMES) + 1
    return ",\n".join(f"    {c.name:<{width}}{c.ddl}" for c in COLUMNS).replace("{", "{{").replace("}", "}}")


def column_list(names: tuple[str, ...] = NAMES) -> sql.Composed:
    return sql.SQL(", ").join(map(sql.Identifier, names))


def stage_ddl(
    table: sql.Identifier,
    names: tuple[str, ...],
    *,
    json_as_text: bool,
    on_commit: str,
    extras: tuple[Column, ...] = (),
) -> sql.Composed:
    """``CREATE TEMP TABLE`` with ``names`` typed like the table (no constraints). ``json_as_text``:
    metadata as text (restore casts it after checking). ``on_commit``: DROP or DELETE ROWS."""
    types = {c.name: c.ddl.split()[0].replace("bigserial", "bigint") for c in COLUMNS}
    types.update((c.name, c.pg) for c in extras)
    if json_as_text:
        types.update((c.name, "text") for c in (*COLUMNS, *extras) if c.manifest in ("json", "decimal"))
    cols = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(types[n])) for n in names)
    return sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ({}) ON COMMIT {}").format(table, cols, sql.SQL(on_commit))


def manifest_types() -> dict[str, str]:
    return {c.name: c.manifest for c in COLUMNS}


def duck_csv_columns(shape: Shape = BASE) -> str:
    """DuckDB ``read_csv(columns = {...})`` for the archive's CSV."""
    return "{" + ", ".join(f"'{c.name}': '{c.duck}'" for c in shape.columns) + "}"


def arrow_type(manifest: str) -> Any:
    """The Arrow type of a manifest type name (decimals travel as their exact text)."""
    import pyarrow as pa

    return {
        "int64": pa.int64(), "uuid": pa.uuid(), "timestamp[us, UTC]": pa.timestamp("us", tz="UTC"),
        "int32": pa.int32(), "int16": pa.int16(), "bool": pa.bool_(), "float32": pa.float32(),
        "float64": pa.float64(), "decimal": pa.string(), "date32": pa.date32(), "string": pa.string(),
        "json": pa.json_(pa.string()),
    }[manifest]  # fmt: skip


def arrow_schema(shape: Shape = BASE) -> Any:
    """The archive's Parquet schema: ids as strings, jsonb as Parquet's JSON type, timestamptz as µs UTC.
    (Archives of schema 1 hold the ids as Parquet's UUID type; readers accept both.)"""
    import pyarrow as pa

    return pa.schema([pa.field(c.name, arrow_type(c.manifest), nullable=not c.not_null) for c in shape.columns])
