"""``callvault bench ingest``: the batching writer against its baselines, same rows, one run.

Phases, each into a freshly initialised table in schema ``callvault_bench``:

a. the sync :class:`Writer`; b. the :class:`AsyncWriter`; c. raw server-side ``COPY FROM`` a file
holding the same rows (the ceiling; streamed ``FROM STDIN`` when the server cannot read our files);
d. the seed's per-row autocommit ``INSERT`` on a sample, on 1 and on 16 connections; e. the writer's
idempotent path (re-sending rows that are all already present).

The N rows are generated once, up front (seeded: 100 tenants, time-ordered arrivals over the three
days before now, transcripts of ``row_bytes - 150`` bytes), and the same objects feed every phase, so
the timings compare ingest paths, not data generation. ``writer_overhead_rss_mb`` is the writer's own
memory: peak RSS during the writer phase minus the RSS with the data set loaded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import resource
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from callvault import bootstrap
from callvault.bench import _files, _tables, data
from callvault.bench._timing import server_now
from callvault.config import Settings
from callvault.db import connect, resolve_dsn
from callvault.ingest import AsyncWriter, Writer
from callvault.ingest.call import Call
from callvault.ingest.common import DEFAULT_BATCH_ROWS
from callvault.ingest.validate import COLUMNS

SCHEMA = "callvault_bench"
PER_ROW_SAMPLE = 20_000  # the seed's pattern is ~100x slower: a sample is enough for its rate
PER_ROW_CONNS = 16
IDEMPOTENT_SAMPLE = 100_000
SETTINGS_SHOWN = ("synchronous_commit", "fsync", "wal_level", "shared_buffers", "max_wal_size", "full_page_writes")


@dataclass
class IngestResult:
    rows: int
    row_bytes: int
    rates: dict[str, float] = field(default_factory=dict)
    writer_peak_rss_mb: float = 0.0
    dataset_rss_mb: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        r = self.rates
        out: dict[str, Any] = {"rows": self.rows, "row_bytes": self.row_bytes}
        out.update({f"{k}_rows_per_s": round(v) for k, v in r.items()})
        out["writer_vs_raw_copy"] = round(r["writer"] / r["raw_copy"], 3)
        out["async_writer_vs_raw_copy"] = round(r["async_writer"] / r["raw_copy"], 3)
        out["writer_vs_per_row"] = round(r["writer"] / r["per_row_insert"], 1)
        out["writer_vs_per_row_16conn"] = round(r["writer"] / r["per_row_insert_16conn"], 1)
        if "writer_redacting" in r:  # the built-in redactors on, every transcript holding a phone and an e-mail
            out["writer_redacting_vs_writer"] = round(r["writer_redacting"] / r["writer"], 3)
        out["writer_mb_per_s"] = round(r["writer"] * self.row_bytes / 1e6, 1)
        out["writer_peak_rss_mb"] = round(self.writer_peak_rss_mb, 1)
        out["dataset_rss_mb"] = round(self.dataset_rss_mb, 1)
        out["writer_overhead_rss_mb"] = round(self.writer_peak_rss_mb - self.dataset_rss_mb, 1)
        out.update(self.info)
        return out


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return _peak_rss_mb()


def _fresh_table(settings: Settings, name: str) -> Settings:
    s = settings.with_(schema=SCHEMA, table=name)
    with connect(s) as conn:
        _tables.forget(conn, s, name)
        conn.commit()
        bootstrap.init(conn, s)
    return s


def _timed(work: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    work()
    return time.perf_counter() - t0


def _count(s: Settings) -> int:
    with connect(s) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(s.schema, s.table))).fetchone()
    return int(row[0]) if row else 0


def _as_tuple(c: Call) -> tuple[object, ...]:
    import json

    return (c.tenant_id, c.call_id, c.started_at, c.ended_at, c.duration_sec, c.transcript, json.dumps(c.metadata))


class IngestBench:
    def __init__(self, settings: Settings, rows: int, row_bytes: int, progress: Callable[[str, int], None]) -> None:
        self.settings, self.rows, self.row_bytes, self.progress = settings, rows, row_bytes, progress
        self.now = server_now(settings)
        self.dataset: list[Call] = []

    def calls(self, n: int | None = None) -> Iterator[Call]:
        """The pre-generated rows (the same objects in every phase), reporting progress."""
        for i, call in enumerate(itertools.islice(self.dataset, n or self.rows)):
            if i % 10_000 == 0:
                self.progress("rows", 10_000)
            yield call

    def run(self) -> IngestResult:
        res = IngestResult(rows=self.rows, row_bytes=self.row_bytes)
        self.progress("phase:generating rows", 0)
        self.dataset = list(data.calls(self.rows, row_bytes=self.row_bytes, now=self.now))
        res.dataset_rss_mb = _rss_mb()
        with connect(self.settings) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
            conn.commit()
        res.rates["writer"] = self._writer(res)
        res.rates["writer_redacting"] = self._writer_redacting()
        res.rates["async_writer"] = self._async_writer()
        res.rates["raw_copy"] = self._raw_copy(res)
        res.rates["per_row_insert"] = self._per_row(1)
        res.rates["per_row_insert_16conn"] = self._per_row(PER_ROW_CONNS)
        res.rates["writer_idempotent"] = self._idempotent()
        res.info.update(self._info())
        return res

    def _writer(self, res: IngestResult) -> float:
        s = _fresh_table(self.settings, "writer_sync")
        self.progress("phase:sync writer", 0)

        def go() -> None:
            with Writer(s) as w:
                w.write_many(self.calls())

        seconds = _timed(go)
        res.writer_peak_rss_mb = _peak_rss_mb()
        assert _count(s) == self.rows, "the writer lost rows"
        return self.rows / seconds

    def _writer_redacting(self) -> float:
        """The sync writer with ``redact=True`` over the same rows, each transcript carrying a phone number and
        an e-mail address mid-text (the redactors' slow path), generated before the clock starts."""
        pii = " call me back at +1 555 010 2030 or mail ann.lee@example.com "
        rows = [dataclasses.replace(c, transcript=c.transcript[:500] + pii + c.transcript[500 + len(pii):])
                if c.transcript else c for c in itertools.islice(self.dataset, self.rows)]  # fmt: skip
        s = _fresh_table(self.settings, "writer_redact")
        self.progress("phase:sync writer, redacting", 0)

        def go() -> None:
            with Writer(s, redact=True) as w:
                w.write_many(rows)

        seconds = _timed(go)
        assert _count(s) == self.rows, "the writer lost rows"
        return self.rows / seconds

    def _async_writer(self) -> float:
        s = _fresh_table(self.settings, "writer_async")
        self.progress("phase:async writer", 0)

        async def go() -> None:
            async with AsyncWriter(s) as w:
                await w.write_many(self.calls())

        seconds = _timed(lambda: asyncio.run(go()))
        assert _count(s) == self.rows, "the async writer lost rows"
        return self.rows / seconds

    def _raw_copy(self, res: IngestResult) -> float:
        src = self.settings.with_(schema=SCHEMA, table="writer_sync")
        s = _fresh_table(self.settings, "raw_copy")
        self.progress("phase:raw COPY", 0)
        cols = _files.COLS
        target = sql.Identifier(SCHEMA, s.table)
        source = sql.Identifier(SCHEMA, "writer_sync")
        with connect(src) as exporter, _files.rows_file(exporter, source) as path, connect(s) as conn:
            try:
                stmt = sql.SQL("COPY {} ({}) FROM {}").format(target, cols, sql.Literal(str(path)))
                seconds = _timed(lambda: self._server_copy(conn, stmt))
                res.info["raw_copy_method"] = "server-side COPY FROM file"
            except psycopg.Error:
                conn.rollback()
                seconds = _timed(lambda: self._copy_stdin(conn, target, cols, path))
                res.info["raw_copy_method"] = "COPY FROM STDIN (server cannot read client files)"
        assert _count(s) == self.rows
        return self.rows / seconds

    @staticmethod
    def _server_copy(conn: Any, stmt: sql.Composed) -> None:
        conn.execute(stmt)
        conn.commit()

    @staticmethod
    def _copy_stdin(conn: Any, target: sql.Identifier, cols: sql.Composable, path: Path) -> None:
        with conn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(target, cols)) as cp, path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                cp.write(chunk)
        conn.commit()

    def _per_row(self, conns: int) -> float:
        s = _fresh_table(self.settings, f"per_row_{conns}")
        self.progress(f"phase:per-row INSERT x{conns}", 0)
        sample = [_as_tuple(c) for c in self.dataset[:PER_ROW_SAMPLE]]
        stmt = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            sql.Identifier(SCHEMA, s.table),
            sql.SQL(", ").join(map(sql.Identifier, COLUMNS)),
            sql.SQL(", ").join(sql.Placeholder() * len(COLUMNS)),
        )
        dsn = resolve_dsn(s)
        shares = [sample[i::conns] for i in range(conns)]
        opened = [psycopg.connect(dsn, autocommit=True) for _ in range(conns)]
        barrier = threading.Barrier(conns + 1)

        def worker(conn: psycopg.Connection[Any], rows: list[tuple[object, ...]]) -> None:
            barrier.wait()
            for row in rows:
                conn.execute(stmt, row)

        threads = [threading.Thread(target=worker, args=(c, sh)) for c, sh in zip(opened, shares, strict=True)]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
        for c in opened:
            c.close()
        assert _count(s) == len(sample)
        return len(sample) / seconds

    def _idempotent(self) -> float:
        s = self.settings.with_(schema=SCHEMA, table="writer_sync")
        n = min(IDEMPOTENT_SAMPLE, self.rows)
        self.progress("phase:idempotent re-send", 0)

        def go() -> None:
            with Writer(s) as w:
                w.write_many(self.dataset[:n])  # rows phase (a) wrote: every one is a duplicate
                result = w.flush()
                assert result.duplicates == n and result.written == 0, result

        return n / _timed(go)

    def _info(self) -> dict[str, Any]:
        with connect(self.settings) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            shown = {k: conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(k))).fetchone() for k in SETTINGS_SHOWN}
        return {
            "postgres_version": version[0] if version else None,
            "psycopg_version": psycopg.__version__,
            "settings": {k: v[0] for k, v in shown.items() if v},
            "batch_rows": DEFAULT_BATCH_ROWS,
            "per_row_sample": min(PER_ROW_SAMPLE, self.rows),
            "cpu_count": os.cpu_count(),
        }
