"""Export one table's rows to local files, one tenant at a time, from the client side.

``COPY (SELECT ...) TO STDOUT`` over the ordinary connection: no superuser, nothing installed on the
database host. Rows stream in binary and are turned into Arrow record batches of ``BATCH_ROWS``, so
memory stays bounded by one batch whatever the partition size. Parquet files are zstd-compressed with
the table's types (uuid, timestamptz in UTC, jsonb as JSON text); ``csv`` writes the seed's CSV
(``COPY ... CSV HEADER``) for tools that want it.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import uuid
from collections.abc import Callable, Iterator
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
    conn: Conn,
    table: sql.Identifier,
    tenant: str,
    dest_dir: Path,
    part_rows: int = PART_ROWS,
    *,
    dsn: str | None = None,
) -> list[LocalFile]:
    """Write ``tenant``'s rows of ``table`` to ``dest_dir/part-NNNNN.parquet`` files.

    With ``dsn``, rows travel Postgres -> Arrow in C++ (ADBC's PostgreSQL driver: binary ``COPY`` decoded
    straight into Arrow record batches; Python never touches a row) and each batch is written as it
    arrives, so memory is bounded by one batch. Without it, the pure-Python path (psycopg binary COPY,
    rows into Arrow batches) does the same, slower."""
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


_SELECT_PARTITION = "SELECT {} FROM {} ORDER BY tenant_id, started_at, id"


class _TenantFiles:
    """The part files of one tenant being written: rolls to ``part-00001`` after ``part_rows`` rows."""

    def __init__(self, dest_dir: Path, schema: Any, part_rows: int) -> None:
        private_dir(dest_dir, "archive spool directory")
        self.dest, self.schema, self.part_rows = dest_dir, schema, part_rows
        self.files: list[LocalFile] = []
        self.writer: Any = None
        self.part, self.rows = 0, 0

    def write(self, batch: Any) -> None:
        import pyarrow.parquet as pq

        offset = 0
        while offset < batch.num_rows:
            if self.writer is not None and self.rows >= self.part_rows:
                self.close()
                self.part, self.rows = self.part + 1, 0
            if self.writer is None:
                self.writer = pq.ParquetWriter(self._path(), self.schema, compression="zstd", write_statistics=True)
            take = min(batch.num_rows - offset, self.part_rows - self.rows)
            self.writer.write_batch(batch.slice(offset, take), row_group_size=BATCH_ROWS)
            self.rows += take
            offset += take

    def _path(self) -> Path:
        return self.dest / f"part-{self.part:05d}.parquet"

    def close(self) -> list[LocalFile]:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            path = private_file(self._path())
            size, sha = _digest(path)
            self.files.append(LocalFile(path=path, part=self.part, rows=self.rows, size=size, sha256=sha))
        return self.files


def export_partition_parquet(
    dsn: str, conn: Conn, table: sql.Identifier, dest_dir: Callable[[str], Path], part_rows: int = PART_ROWS
) -> dict[str, list[LocalFile]]:
    """Every tenant's rows of ``table`` into ``dest_dir(tenant)/part-NNNNN.parquet``, in ONE pass.

    Rows travel Postgres -> Arrow in C++ (ADBC's PostgreSQL driver decodes binary ``COPY`` into Arrow
    record batches; Python never touches a row), in primary-key order (tenant, started_at, id: an
    index scan, no sort), and each batch is cut at tenant boundaries and appended to that tenant's
    Parquet file as it arrives: memory is bounded by one batch and one open writer, never by the
    partition. ``conn`` only quotes the statement."""
    import adbc_driver_postgresql.dbapi as adbc
    import pyarrow as pa
    import pyarrow.compute as pc

    schema = arrow_schema()
    query = sql.SQL(_SELECT_PARTITION).format(columns.column_list(), table).as_string(conn)
    out: dict[str, list[LocalFile]] = {}
    current: tuple[str, _TenantFiles] | None = None
    with adbc.connect(dsn or "postgresql://") as aconn, aconn.cursor() as cur:
        cur.execute("SET row_security TO off")  # the whole table or an error, never a filtered view
        cur.execute(query)
        for raw in cur.fetch_record_batch():
            if not raw.num_rows:
                continue
            batch = pa.RecordBatch.from_arrays(raw.columns, schema=schema)
            tenants = batch.column(1).storage  # uuid extension -> 16-byte storage; sorted by tenant
            cuts = [0]
            if batch.num_rows > 1:
                changed = pc.not_equal(tenants.slice(1), tenants.slice(0, batch.num_rows - 1))
                cuts += [int(i) + 1 for i in pc.indices_nonzero(changed).to_pylist()]
            cuts.append(batch.num_rows)
            for lo, hi in itertools.pairwise(cuts):
                tenant = str(uuid.UUID(bytes=tenants[lo].as_py()))
                if current is None or current[0] != tenant:
                    if current is not None:
                        out[current[0]] = current[1].close()
                    current = (tenant, _TenantFiles(dest_dir(tenant), schema, part_rows))
                current[1].write(batch.slice(lo, hi - lo))
    if current is not None:
        out[current[0]] = current[1].close()
    return out


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
