"""Load archived objects back into Postgres: a temporary stage table filled with ``COPY`` from the
downloaded files (each checked against its manifest SHA-256), then inserted where it belongs with
``ON CONFLICT DO NOTHING``. Used by ``restore`` and by a re-archive that merges what an earlier run
archived for the same period (:func:`callvault.archive.pipeline.step_export`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from psycopg import sql

from callvault import catalog, columns
from callvault.archive.layout import Manifest
from callvault.archive.store import Store, sha256_file
from callvault.db import Conn
from callvault.errors import ArchiveVerifyFailed

_COLS = columns.NAMES
_STAGE = "callvault_restore_stage"
_REPORT_ROWS = 10_000  # progress every so many rows


def _rows(path: Path, fmt: str, shape: columns.Shape = columns.BASE) -> Iterator[tuple[object, ...]]:
    """The file's rows as Postgres text input, streamed in batches (bounded memory for 1M-row parts); the
    table's own columns as text (NULL where the object predates the column: schema evolution)."""
    import duckdb

    if fmt == "parquet":
        src = "read_parquet($f, hive_partitioning = false)"
    else:
        src = "read_csv($f, header = true, all_varchar = true, allow_quoted_nulls = false)"
    cols = (
        "id, tenant_id::VARCHAR, call_id::VARCHAR, started_at::VARCHAR, ended_at::VARCHAR, duration_sec, "
        "transcript, metadata::VARCHAR"
    )
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        if shape.extras:
            held = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {src}", {"f": str(path)}).fetchall()}
            for c in shape.extras:
                cols += f', "{c.name}"::VARCHAR' if c.name in held and c.name.isidentifier() else ", NULL"
        cur = con.execute(f"SELECT {cols} FROM {src}", {"f": str(path)})
        while batch := cur.fetchmany(10_000):
            yield from batch


def stage(
    conn: Conn,
    store: Store,
    manifest: Manifest,
    tenants: list[str],
    workdir: Path,
    on_rows: Callable[[int, int], None] | None = None,
    shape: columns.Shape = columns.BASE,
) -> None:
    """COPY the ``tenants``' objects of ``manifest`` into the stage table, one downloaded object at a
    time (each checked against its SHA-256); ``on_rows(rows, bytes)`` after each block of rows."""
    names = shape.names
    conn.execute(
        columns.stage_ddl(sql.Identifier(_STAGE), names, json_as_text=True, on_commit="DROP", extras=shape.extras)
    )
    copy_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(_STAGE), sql.SQL(", ").join(map(sql.Identifier, names))
    )
    for tenant in tenants:
        for obj in manifest.tenants[tenant].objects:
            dest = workdir / obj.key.replace("/", "_")
            store.get_file(obj.key, dest)
            if sha256_file(dest) != obj.sha256:
                raise ArchiveVerifyFailed(f"{obj.key} in {store.url} does not match its manifest SHA-256 (corrupted)")
            with conn.cursor() as cur, cur.copy(copy_sql) as copy:
                done = 0
                for row in _rows(dest, manifest.fmt, shape):
                    copy.write_row(row)
                    done += 1
                    if on_rows is not None and done % _REPORT_ROWS == 0:
                        on_rows(_REPORT_ROWS, obj.size * _REPORT_ROWS // max(obj.rows, 1))
                if on_rows is not None and done % _REPORT_ROWS:
                    on_rows(done % _REPORT_ROWS, obj.size * (done % _REPORT_ROWS) // max(obj.rows, 1))
            dest.unlink()


def insert_from_stage(conn: Conn, target: sql.Identifier) -> tuple[int, int]:
    """(rows inserted, rows already present) from the stage into ``target`` (every column the stage has)."""
    rows = conn.execute(catalog.SHAPE_SQL, (sql.Identifier("pg_temp", _STAGE).as_string(conn),)).fetchall()
    staged_cols = [str(r[0]) for r in rows] or list(_COLS)
    shape = columns.shape_of(conn.execute(catalog.SHAPE_SQL, (target.as_string(conn),)).fetchall())
    casts = {c.name: c.pg for c in shape.columns if c.manifest in ("json", "decimal")}
    cols = sql.SQL(", ").join(map(sql.Identifier, staged_cols))
    select = sql.SQL(", ").join(
        sql.SQL("{}::{}").format(sql.Identifier(c), sql.SQL(casts[c])) if c in casts else sql.Identifier(c)
        for c in staged_cols
    )
    cur = conn.execute(
        sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT DO NOTHING").format(
            target, cols, select, sql.Identifier(_STAGE)
        )
    )
    staged = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(_STAGE))).fetchone()
    total = int(staged[0]) if staged else 0
    return cur.rowcount, total - cur.rowcount
