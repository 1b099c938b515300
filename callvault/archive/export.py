"""Export one table's rows to local files, one tenant at a time, from the client side.

``COPY (SELECT ...) TO STDOUT`` over the ordinary connection: no superuser, nothing installed on the
database host. Rows stream in binary and are turned into Arrow record batches of ``BATCH_ROWS``, so
memory stays bounded by one batch whatever the partition size. Parquet files are zstd-compressed with
the table's types (uuid, timestamptz in UTC, jsonb as JSON text); ``csv`` writes the seed's CSV
(``COPY ... CSV HEADER``) for tools that want it.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg import sql

from callvault import columns
from callvault.archive.layout import PART_ROWS
from callvault.db import Conn
from callvault.private import open_private, private_dir, private_file

BATCH_ROWS = 32_768  # rows per Arrow batch / Parquet row group (~40 MB of 1.2 KB rows)
_COPY_BLOCK = 1024 * 1024

_SELECT_BINARY = (
    "SELECT id, uuid_send(call_id), (extract(epoch FROM started_at) * 1000000)::int8, "
    "(extract(epoch FROM ended_at) * 1000000)::int8, duration_sec, transcript, metadata::text "
    "FROM {} WHERE tenant_id = {} ORDER BY started_at, call_id"
)
_SELECT_CSV = "SELECT " + ", ".join(columns.NAMES) + " FROM {} WHERE tenant_id = {} ORDER BY started_at, call_id"
_TYPES = ["int8", "bytea", "int8", "int8", "int4", "text", "text"]


@dataclass(frozen=True)
class LocalFile:
    path: Path
    part: int
    rows: int
    size: int
    sha256: str


def arrow_schema() -> Any:
    return columns.arrow_schema()


def _digest(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_COPY_BLOCK):
            h.update(block)
    return path.stat().st_size, h.hexdigest()


def _batches(conn: Conn, table: sql.Identifier, tenant: str) -> Iterator[Any]:
    import pyarrow as pa

    schema = arrow_schema()
    tenant_bytes = uuid.UUID(tenant).bytes
    query = sql.SQL(_SELECT_BINARY).format(table, sql.Literal(tenant))
    cols: list[list[Any]] = [[] for _ in _TYPES]

    def flush() -> Any:
        n = len(cols[0])
        tid = pa.ExtensionArray.from_storage(pa.uuid(), pa.array([tenant_bytes] * n, pa.binary(16)))
        arrays = [
            pa.array(cols[0], pa.int64()),
            tid,
            pa.ExtensionArray.from_storage(pa.uuid(), pa.array(cols[1], pa.binary(16))),
            pa.array(cols[2], pa.int64()).cast(schema.field("started_at").type),
            pa.array(cols[3], pa.int64()).cast(schema.field("ended_at").type),
            pa.array(cols[4], pa.int32()),
            pa.array(cols[5], pa.string()),
            pa.ExtensionArray.from_storage(pa.json_(pa.string()), pa.array(cols[6], pa.string())),
        ]
        for c in cols:
            c.clear()
        return pa.RecordBatch.from_arrays(arrays, schema=schema)

    with conn.cursor() as cur, cur.copy(sql.SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(query)) as copy:
        copy.set_types(_TYPES)
        appends = [c.append for c in cols]
        for row in copy.rows():
            for append, value in zip(appends, row, strict=True):
                append(value)
            if len(cols[0]) >= BATCH_ROWS:
                yield flush()
    if cols[0]:
        yield flush()


def export_parquet(
    conn: Conn, table: sql.Identifier, tenant: str, dest_dir: Path, part_rows: int = PART_ROWS
) -> list[LocalFile]:
    """Write ``tenant``'s rows of ``table`` to ``dest_dir/part-NNNNN.parquet`` files."""
    import pyarrow.parquet as pq

    private_dir(dest_dir, "archive spool directory")
    files: list[LocalFile] = []
    writer: Any = None
    part, rows = 0, 0

    def close() -> None:
        nonlocal writer
        if writer is None:
            return
        writer.close()
        path = private_file(dest_dir / f"part-{part:05d}.parquet")
        size, sha = _digest(path)
        files.append(LocalFile(path=path, part=part, rows=rows, size=size, sha256=sha))
        writer = None

    for batch in _batches(conn, table, tenant):
        offset = 0
        while offset < batch.num_rows:
            if writer is not None and rows >= part_rows:
                close()
                part, rows = part + 1, 0
            if writer is None:
                writer = pq.ParquetWriter(
                    dest_dir / f"part-{part:05d}.parquet", batch.schema, compression="zstd", write_statistics=True
                )
            take = min(batch.num_rows - offset, part_rows - rows)
            writer.write_batch(batch.slice(offset, take), row_group_size=BATCH_ROWS)
            rows += take
            offset += take
    close()
    return files


def export_csv(conn: Conn, table: sql.Identifier, tenant: str, dest_dir: Path) -> list[LocalFile]:
    """The seed's CSV (one file per tenant): ``COPY ... TO STDOUT (FORMAT csv, HEADER)``, streamed."""
    private_dir(dest_dir, "archive spool directory")
    path = dest_dir / "part-00000.csv"
    query = sql.SQL(_SELECT_CSV).format(table, sql.Literal(tenant))
    with conn.cursor() as cur, os.fdopen(open_private(path), "wb") as out:
        with cur.copy(sql.SQL("COPY ({}) TO STDOUT (FORMAT csv, HEADER)").format(query)) as copy:
            for block in copy:
                out.write(block)
        out.flush()
    count = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE tenant_id = %s").format(table), (tenant,)).fetchone()
    size, sha = _digest(path)
    return [LocalFile(path=path, part=0, rows=int(count[0]) if count else 0, size=size, sha256=sha)]
