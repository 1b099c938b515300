"""Export one partition's rows to local files, from the client side (no superuser, nothing installed
on the database host).

* Parquet (:func:`export_partition_parquet`): one pass over the partition through ADBC's PostgreSQL
  driver (binary ``COPY`` decoded into Arrow in C++), cut by tenant into zstd Parquet files as the
  batches arrive; memory is bounded by a fixed buffer, not by the partition. Ids are strings, jsonb is
  Parquet's JSON type, timestamptz µs in UTC (:func:`callvault.columns.arrow_schema`).
* CSV (:func:`export_csv`): the seed's CSV (``COPY ... CSV HEADER``), one tenant at a time, streamed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import os
import queue
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from psycopg import sql

from callvault import catalog, columns
from callvault.archive import layout
from callvault.archive.layout import PART_ROWS, Fingerprint
from callvault.db import Conn
from callvault.private import open_private, private_dir, private_file

_COPY_BLOCK = 1024 * 1024

_SELECT_CSV = "SELECT " + ", ".join(columns.NAMES) + " FROM {} WHERE tenant_id = {} ORDER BY started_at, call_id"


@dataclass(frozen=True)
class LocalFile:
    """One exported file in the spool: its part number, rows, size and SHA-256."""

    path: Path
    part: int
    rows: int
    size: int
    sha256: str


def arrow_schema(shape: columns.Shape = columns.BASE) -> Any:
    """The archive's Parquet schema (see :func:`callvault.columns.arrow_schema`)."""
    return columns.arrow_schema(shape)


def select_partition(table: sql.Identifier, shape: columns.Shape) -> sql.Composed:
    """The export's scan: ids as text, then the table's own columns (uuid and numeric ones as text)."""
    extras = [
        sql.SQL("{}::text AS {}").format(sql.Identifier(c.name), sql.Identifier(c.name))
        if c.copy in ("uuid", "numeric") else sql.Identifier(c.name)
        for c in shape.extras
    ]  # fmt: skip
    tail = sql.SQL("").join(sql.SQL(", {}").format(e) for e in extras)
    return sql.SQL(_SELECT_PARTITION.replace(" FROM {}", "{} FROM {}")).format(tail, table)


def _digest(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_COPY_BLOCK):
            h.update(block)
    return path.stat().st_size, h.hexdigest()


_SELECT_PARTITION = (
    "SELECT id, tenant_id::text AS tenant_id, call_id::text AS call_id, started_at, ended_at, duration_sec, "
    "transcript, metadata FROM {}"
)
P = ParamSpec("P")
R = TypeVar("R")
BUFFER_BYTES = 32 * 1024 * 1024  # batches held before they are split by tenant and spilled
ROW_GROUP_ROWS = 32_768  # rows per Parquet row group (a tenant with fewer has one)
WRITE_THREADS = 2  # tenants' row groups encoded and compressed at once
MAX_OPEN_FILES = 512  # Parquet files open at once (the fd limit is raised for them); past it the least
# recently written is closed and its tenant rolls to the next part
ADBC_BATCH_BYTES = 16 * 1024 * 1024  # the size of a record batch the driver hands over (a hint)
# A tenant's slice of one buffer of at least DIRECT_ROWS rows (a tenant with ~16% of the rows and more) is
# a row group of its own, written to the tenant's Parquet file during the scan: a heavy tenant's rows are
# never spilled and read back (a 1M-row partition with one tenant of 30%: export 4.18 -> 3.73 s, mean
# of three; 3% more bytes, its row groups being one buffer's run, ~7.5k rows; uniform tenants: no change).
# At most DIRECT_TENANTS tenants keep a Parquet file open during the scan; the others spill.
DIRECT_ROWS = 4_096
DIRECT_TENANTS = 8
# Added to the export thread's nice value (Linux, per thread; the threads it starts inherit it): the
# export yields the CPU to an application's writers on the same machine (measured at 1M rows: a writer's
# p99 commit during the archive 14.0 ms without, 7.9 ms with). pyarrow's global thread pool is started
# from the caller's thread first, so none of its long-lived threads inherits the lower priority.
NICE = 10
# Parquet min/max statistics for every column but the long texts: comparing 1.2 KB transcripts cost ~6% of
# an export (1M rows), and no reader prunes row groups on them
_NO_STATS = frozenset({"transcript", "metadata"})
# No dictionary for the columns unique per row: the writer hashes every value until its dictionary page
# is full, then falls back to plain (at 1M rows: 0.99 -> 0.66 s of Parquet encoding, and 15% fewer bytes)
_NO_DICTIONARY = frozenset({"id", "call_id", "started_at", "ended_at"})
_QUEUE_BATCHES = 2  # record batches read ahead of the writer (memory: a batch is ~16 MB of 1.2 KB rows)


@dataclass
class PartitionExport:
    """What :func:`export_partition_parquet` wrote: each tenant's files, and each tenant's fingerprint
    (``sums+hash``) computed by DuckDB over the Arrow stream as it was written."""

    files: dict[str, list[LocalFile]]
    fingerprints: dict[str, Fingerprint]
    columns: dict[str, str] = field(default_factory=columns.manifest_types)  # name -> manifest type, as written


class _Sums:
    """A tenant's ``sums+hash`` fingerprint, added up batch by batch."""

    def __init__(self) -> None:
        self.rows, self.digest = 0, 0
        self.sums = [0] * len(layout.CHECK_NAMES)
        self.lo: int | None = None
        self.hi: int | None = None

    def add(self, row: tuple[Any, ...]) -> None:
        n = len(layout.CHECK_NAMES)
        self.rows += int(row[1])
        self.digest += int(row[2])
        for i, v in enumerate(row[3 : 3 + n]):
            self.sums[i] += int(v)
        lo, hi = row[3 + n], row[4 + n]
        self.lo = lo if self.lo is None or (lo is not None and lo < self.lo) else self.lo
        self.hi = hi if self.hi is None or (hi is not None and hi > self.hi) else self.hi

    def fingerprint(self) -> Fingerprint:
        check = {name: str(v) for name, v in zip(layout.CHECK_NAMES, self.sums, strict=True)}
        return Fingerprint(self.rows, str(self.digest), self.lo, self.hi, layout.SUMS_HASH, check)


class _TenantFiles:
    """One tenant's rows of the partition: first spilled, as they arrive, to uncompressed Arrow IPC
    segments in its spool directory (cheap appends, whatever the slice size), then turned into zstd
    Parquet with full row groups of ``ROW_GROUP_ROWS`` (:meth:`finish`), rolled into ``part-00001``
    after ``part_rows`` rows. A segment closed to free a descriptor is followed by a new one."""

    def __init__(self, dest_dir: Path, schema: Any, part_rows: int) -> None:
        self.dest, self.schema, self.part_rows = dest_dir, schema, part_rows
        self.files: list[LocalFile] = []
        self.segments: list[Path] = []
        self.writer: Any = None  # the open IPC segment
        self._sink: Any = None
        self._parquet: Any = None
        self.part, self.rows = 0, 0
        self.direct = False  # rows of it go straight to Parquet during the scan (write_group)

    def write_group(self, table: Any) -> None:
        """``table`` (one buffer's sorted run of the tenant's rows) as a row group of its own, straight into
        the tenant's Parquet file: no spill."""
        private_dir(self.dest, "archive spool directory")
        self._row_group(table.to_batches())

    def write(self, table: Any) -> None:
        """Append ``table`` to the open spill segment (opening one if needed)."""
        import pyarrow as pa

        if self.writer is None:
            private_dir(self.dest, "archive spool directory")
            path = self.dest / f".spill-{len(self.segments):05d}.arrow"
            self._sink = pa.OSFile(str(path), "wb")
            # uncompressed: lz4 here cost ~15% of the archive's time at 1M rows; the spool check counts the
            # partition's whole size on disk for it (see callvault.archive.pipeline)
            self.writer = pa.ipc.new_stream(self._sink, self.schema)
            self.segments.append(path)
        self.writer.write_table(table)

    def close_file(self) -> None:
        """Close the open spill segment (if any); later rows go to a new one."""
        if self.writer is None:
            return
        self.writer.close()
        self._sink.close()
        self.writer = self._sink = None

    def finish(self) -> list[LocalFile]:
        """Turn the spilled segments into the tenant's Parquet parts (row groups of ``ROW_GROUP_ROWS``,
        made of the sorted runs the buffers spilled); the segments are removed. Memory: one row group."""
        import pyarrow as pa

        self.close_file()
        group: list[Any] = []
        rows = 0
        for seg in self.segments:
            # buffered reads, not a memory map: a mapped segment's pages stay resident until it is closed,
            # and a heavy tenant's segment is a third of the partition (2 GB RSS at a 6 GB week)
            with pa.OSFile(str(seg), "rb") as src:
                for batch in pa.ipc.open_stream(src):
                    group.append(batch)
                    rows += batch.num_rows
                    if rows >= ROW_GROUP_ROWS:
                        self._row_group(group)
                        group, rows = [], 0
                if group:  # rows left for the next group: copied out before the segment is removed
                    group = pa.Table.from_batches(group, schema=self.schema).combine_chunks().to_batches()
            seg.unlink()
        self._row_group(group)
        self._close_part()
        self.segments = []
        return self.files

    def _row_group(self, batches: list[Any]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not batches:
            return
        # no sort here: each batch is already one tenant's rows of one buffer in started_at order (a sorted
        # run; the runs follow the partition's physical order). Readers order rows themselves.
        table = pa.Table.from_batches(batches, schema=self.schema)
        offset = 0
        while offset < table.num_rows:
            if self._parquet is not None and self.rows >= self.part_rows:
                self._close_part()
            if self._parquet is None:
                stats = [n for n in self.schema.names if n not in _NO_STATS]
                dictionary = [n for n in self.schema.names if n not in _NO_DICTIONARY]
                self._parquet = pq.ParquetWriter(
                    self._path(), self.schema, compression="zstd", write_statistics=stats, use_dictionary=dictionary
                )
            take = min(table.num_rows - offset, self.part_rows - self.rows)
            self._parquet.write_table(table.slice(offset, take), row_group_size=take)
            self.rows += take
            offset += take

    def _path(self) -> Path:
        return self.dest / f"part-{self.part:05d}.parquet"

    def _close_part(self) -> None:
        if self._parquet is None:
            return
        self._parquet.close()
        self._parquet = None
        path = private_file(self._path())
        size, sha = _digest(path)
        self.files.append(LocalFile(path=path, part=self.part, rows=self.rows, size=size, sha256=sha))
        self.part, self.rows = self.part + 1, 0

    def abort(self) -> None:
        """Close whatever is open (after a failure; the spool directory is removed by the caller)."""
        self.close_file()
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None


def _raise_file_limit(want: int) -> None:
    """Raise this process's soft limit on open files to ``want`` (at most the hard limit)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _read_ahead(reader: Any, out: queue.Queue[Any], stop: threading.Event) -> None:
    """Feed ``out`` with the reader's record batches (then None), or the exception that stopped it."""
    try:
        for batch in reader:
            if not _put(out, batch, stop):
                return
        _put(out, None, stop)
    except BaseException as exc:  # handed to the consumer, which raises it
        _put(out, exc, stop)


def _put(out: queue.Queue[Any], item: object, stop: threading.Event) -> bool:
    """Hand ``item`` to the consumer unless it stopped listening (then False)."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.2)
            return True
        except queue.Full:
            continue
    return False


def _start_arrow_pool() -> None:
    """Start pyarrow's global CPU and I/O thread pools from the calling thread (a tiny in-memory scan;
    they start lazily, and would otherwise be started, and niced for good, by the export thread)."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    ds.dataset(pa.table({"x": [1]})).to_table()


def load_engines() -> None:
    """Import the export's engines (pyarrow, DuckDB, ADBC's driver: ~0.3 s in a fresh process) and start
    pyarrow's thread pools. An archive run calls it before its first partition, whose seconds then
    measure the partition rather than the process's start-up; later calls cost nothing."""
    import adbc_driver_postgresql.dbapi  # noqa: F401
    import duckdb  # noqa: F401
    import pyarrow.compute
    import pyarrow.ipc
    import pyarrow.parquet  # noqa: F401

    _start_arrow_pool()


def _lower_priority(steps: int) -> None:
    """Raise the calling thread's nice value by ``steps`` (Linux keeps it per thread; threads it
    starts inherit it). Anything else, or a refusal, leaves the priority alone."""
    if steps <= 0 or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, min(19, os.getpriority(os.PRIO_PROCESS, 0) + steps))


def _niced(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` run on a thread of its own at ``NICE`` (its reader, writer and DuckDB threads inherit it; the
    database server's processes are not affected); its result or exception comes back to the caller."""

    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        outcome: dict[str, Any] = {}
        _start_arrow_pool()

        def run() -> None:
            _lower_priority(NICE)
            try:
                outcome["done"] = fn(*args, **kwargs)
            except BaseException as exc:  # raised again on the caller's thread
                outcome["error"] = exc

        worker = threading.Thread(target=run, name="callvault-export", daemon=True)
        worker.start()
        worker.join()
        if "error" in outcome:
            raise outcome["error"]
        done: R = outcome["done"]
        return done

    return call


def _export_partition_parquet(
    dsn: str,
    conn: Conn,
    table: sql.Identifier,
    dest_dir: Callable[[str], Path],
    part_rows: int = PART_ROWS,
    *,
    on_batch: Callable[[int, int], None] | None = None,
) -> PartitionExport:
    """Every tenant's rows of ``table`` into ``dest_dir(tenant)/part-NNNNN.parquet``, in ONE pass.

    Rows travel Postgres -> Arrow in C++ (ADBC's PostgreSQL driver decodes binary ``COPY`` into Arrow
    record batches; Python never touches a row) in the table's physical order (a sequential scan: an
    index-ordered read was 4x slower), on a thread of their own so the next batches arrive while the
    buffer is written. Batches are buffered up to ``BUFFER_BYTES``; DuckDB adds the buffer's
    ``sums+hash`` fingerprint per tenant, then it is ordered by tenant and each tenant's rows are
    appended to its spill (``WRITE_THREADS`` tenants at a time). Memory
    is bounded by the buffer (and one tenant's rows of it), never by the partition. ``conn`` only
    quotes the statement; ``on_batch(rows, bytes)`` is called after each batch (progress)."""
    import adbc_driver_postgresql.dbapi as adbc
    import duckdb
    import pyarrow as pa
    import pyarrow.compute as pc

    shape = columns.shape_of(conn.execute(catalog.SHAPE_SQL, (table.as_string(conn),)).fetchall())
    schema = arrow_schema(shape)
    query = select_partition(table, shape).as_string(conn)
    tenants: dict[str, _TenantFiles] = {}
    sums: dict[str, _Sums] = {}
    open_files: OrderedDict[str, None] = OrderedDict()  # tenants with an open file, least recent first
    buffer: list[Any] = []
    buffered = 0
    fingerprint_sql = layout.DUCK_SUMS_HASH_BY.format(source="(SELECT *, tenant_id AS grp FROM cv_batch)")

    def digest(duck: Any, rows: Any) -> None:
        duck.register("cv_batch", rows)
        for row in duck.execute(fingerprint_sql).fetchall():
            sums.setdefault(str(row[0]), _Sums()).add(row)
        duck.unregister("cv_batch")

    pending_digest: list[Any] = []  # the digest of the last buffer, still running
    spilling: list[Any] = []  # the last buffer's spill writes, still running

    def write_buffer(duck: Any) -> None:
        nonlocal buffer, buffered
        if not buffer:
            return
        # one take into (tenant, started_at) order, straight from the buffer's chunks (pyarrow 26: 3x faster
        # than a contiguous copy first, at 2 or 40 chunks); each tenant's rows are then a zero-copy slice.
        # The batches are freed on the way.
        rows = pa.Table.from_batches(buffer, schema=schema)
        buffer, buffered = [], 0
        codes = pc.dictionary_encode(rows.column("tenant_id").combine_chunks())
        keys = pa.table({"t": codes.indices, "s": rows.column("started_at")})
        order = pc.sort_indices(keys, sort_keys=[("t", "ascending"), ("s", "ascending")])
        rows = rows.take(order)  # the buffer as it came is freed here
        ordered_codes = pc.take(codes.indices, order)
        # the buffer's sums+hash per tenant (the sums do not depend on the order): one DuckDB query per
        # buffer (per 16 MB batch, the queries' own cost was half the digest's), on a thread of its own while
        # this one spills (DuckDB and Arrow both work without the GIL). One digest runs at a time. Over the
        # ordered copy, which the spills hold anyway: the arrival-order buffer is not kept for it (~40 MB
        # less at the peak: a 4M-row export 519 -> 485 MB)
        wait_digest()
        pending_digest.append(digester.submit(digest, duck, rows))
        cuts = [0]
        if len(order) > 1:
            changed = pc.not_equal(ordered_codes.slice(1), ordered_codes.slice(0, len(order) - 1))
            cuts += [int(i) + 1 for i in pc.indices_nonzero(changed).to_pylist()]
        cuts.append(len(order))
        work = []
        direct_tenants = sum(1 for f in tenants.values() if f.direct)
        for lo, hi in itertools.pairwise(cuts):
            tenant = str(codes.dictionary[ordered_codes[lo].as_py()].as_py())
            files = tenants.get(tenant)
            if files is None:
                files = tenants[tenant] = _TenantFiles(dest_dir(tenant), schema, part_rows)
            direct = hi - lo >= DIRECT_ROWS and (files.direct or direct_tenants < DIRECT_TENANTS)
            if direct and not files.direct:
                files.direct, direct_tenants = True, direct_tenants + 1
            work.append((tenant, files, rows.slice(lo, hi - lo), direct))

        def write(item: tuple[str, _TenantFiles, Any, bool]) -> None:
            if item[3]:
                item[1].write_group(item[2])
            else:
                item[1].write(item[2])

        # pyarrow writes without the GIL: tenants' slices are spilled side by side, at most MAX_OPEN_FILES
        # tenants at a time, closing the least recently written files first. The last chunk's writes are
        # left running while the next buffer fills and is ordered (double buffering); they are waited for
        # before any file is touched again.
        for i in range(0, len(work), MAX_OPEN_FILES):
            chunk = work[i : i + MAX_OPEN_FILES]
            wait_spills()
            names = {t for t, _, _, _ in chunk}
            opening = sum(1 for _, f, _, direct in chunk if f.writer is None and not direct)
            for t in [t for t in open_files if t not in names]:
                if len(open_files) + opening <= MAX_OPEN_FILES:
                    break
                del open_files[t]
                tenants[t].close_file()
            spilling.extend(writers.submit(write, item) for item in chunk)
            for t, _, _, _ in chunk:
                open_files[t] = None
                open_files.move_to_end(t)

    def wait_spills() -> None:
        while spilling:
            spilling.pop().result()

    def wait_digest() -> None:
        while pending_digest:
            pending_digest.pop().result()

    _raise_file_limit(MAX_OPEN_FILES + 64)
    stop = threading.Event()
    batches: queue.Queue[Any] = queue.Queue(maxsize=_QUEUE_BATCHES)
    with (
        adbc.connect(dsn or "postgresql://") as aconn,
        aconn.cursor() as cur,
        duckdb.connect() as duck,
        ThreadPoolExecutor(WRITE_THREADS) as writers,
        ThreadPoolExecutor(1) as digester,
    ):
        duck.execute("SET TimeZone = 'UTC'")
        cur.execute("SET row_security TO off")  # the whole table or an error, never a filtered view
        cur.adbc_statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(ADBC_BATCH_BYTES)})
        cur.execute(query)
        reader = threading.Thread(target=_read_ahead, args=(cur.fetch_record_batch(), batches, stop), daemon=True)
        reader.start()
        try:
            while (raw := batches.get()) is not None:
                if isinstance(raw, BaseException):
                    raise raw
                if not raw.num_rows:
                    continue
                batch = pa.RecordBatch.from_arrays(raw.columns, schema=schema)
                buffer.append(batch)
                buffered += batch.nbytes
                if buffered >= BUFFER_BYTES:
                    write_buffer(duck)
                if on_batch is not None:
                    on_batch(batch.num_rows, batch.nbytes)
            write_buffer(duck)
            wait_spills()
            wait_digest()
            for files in tenants.values():  # free the descriptors before the Parquet phase opens more
                files.close_file()
            list(writers.map(lambda f: f.finish(), tenants.values()))
        finally:
            stop.set()
            # no thread may still write a file that is closed under it (pyarrow crashes), nor read from
            # the cursor once it is closed: let running writes end, cancel the scan, wait for the reader
            writers.shutdown(wait=True, cancel_futures=True)
            digester.shutdown(wait=True, cancel_futures=True)
            for files in tenants.values():
                files.abort()
            if reader.is_alive():
                with contextlib.suppress(Exception):
                    cur.adbc_cancel()
                reader.join()
    return PartitionExport(
        files={t: f.files for t, f in tenants.items()},
        fingerprints={t: s.fingerprint() for t, s in sums.items()},
        columns=shape.manifest_types(),
    )


export_partition_parquet = _niced(_export_partition_parquet)  # the export, on its own niced thread


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
