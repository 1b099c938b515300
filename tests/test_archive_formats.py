"""The archive's cold path beyond the happy path: progress while it runs, a spool too small for a
partition (refused before anything changes), and objects written by the first exporter (schema 1: ids
as Parquet UUID, md5 fingerprint) restored and queried beside those of the current one (schema 2: ids
as strings, sums+hash). Real Postgres, a real ``file://`` store, a real small filesystem (tmpfs)."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from callvault.archive import layout
from callvault.archive.layout import Manifest, ObjectEntry, TenantEntry
from callvault.archive.pipeline import archive
from callvault.archive.progress import ProgressUpdate
from callvault.archive.reader import query, read_calls
from callvault.archive.restore import restore
from callvault.archive.store import LocalStore, sha256_file
from callvault.config import Settings
from callvault.plan import Interval
from tests.helpers import new_dir, pg_fingerprints, run, run_json
from tests.test_archive import AT, CLI, TENANTS, cli, exists, expected_archive, fill


@pytest.fixture
def filled(dsn: str, conn: psycopg.Connection) -> Settings:
    run("init", "--dsn", dsn)
    fill(conn, per_tenant_week=60)
    return Settings(dsn=dsn)


def rows_of(conn: psycopg.Connection, name: str) -> int:
    return int(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", name))).fetchone()[0])


# ---------------------------------------------------------------- progress


def test_archive_and_restore_report_progress(filled: Settings, conn: psycopg.Connection, tmp_path: Path) -> None:
    expected = expected_archive(conn, filled)
    rows = {name: rows_of(conn, name) for name in expected}
    updates: list[ProgressUpdate] = []
    report = archive(filled, store_url=tmp_path.as_uri(), at=datetime.fromisoformat(AT), progress=updates.append)
    assert {p.partition for p in report.partitions} == set(expected)
    for p in report.partitions:
        mine = [u for u in updates if u.partition == p.partition and u.operation == "archive"]
        assert [u.step for u in mine if u.done] == ["export", "upload", "verify"], "each step ends with done"
        export = next(u for u in mine if u.step == "export" and u.done)
        assert export.rows == rows[p.partition] == p.rows and export.fraction == 1.0 and export.eta_s == 0.0
        assert export.rows_total is not None and export.bytes_total and export.bytes_total > 0
        upload = next(u for u in mine if u.step == "upload" and u.done)
        assert upload.bytes == p.bytes and upload.bytes_total == p.bytes
        started = next(u for u in mine if u.step == "export")
        assert not started.done and started.rows == 0
        assert set(export.to_dict()) >= {"rows", "rows_total", "bytes", "mb_per_s", "rows_per_s", "eta_s", "done"}
    week = min(expected)
    loaded: list[ProgressUpdate] = []
    start = report.partitions[0].start
    rep = restore(filled, start.date(), into="back", store_url=tmp_path.as_uri(), progress=loaded.append)
    assert sum(rep.tenants.values()) == rows[week]
    last = loaded[-1]
    assert (last.operation, last.step, last.done, last.rows, last.rows_total) == (
        "restore", "load", True, rows[week], rows[week],
    )  # fmt: skip


def test_cli_draws_progress_only_on_a_terminal(filled: Settings, tmp_path: Path) -> None:
    dsn = filled.dsn or ""
    piped = cli("archive", "--dsn", dsn, "--to", new_dir(tmp_path / "a").as_uri(), "--at", AT)
    assert piped.returncode == 0 and "export" not in piped.stderr, "no progress drawn into a pipe"
    run("restore", "--dsn", dsn, "--to", new_dir(tmp_path / "a").as_uri(), "--week", first_week(tmp_path / "a"))
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [CLI, "archive", "--dsn", dsn, "--to", new_dir(tmp_path / "b").as_uri(), "--at", AT, "--new-store"],
        stdout=subprocess.PIPE, stderr=slave, env={**os.environ, "COLUMNS": "160"},
    )  # fmt: skip
    os.close(slave)
    seen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(timeout=60) == 0
    os.close(master)
    text = seen.decode(errors="replace")
    assert "export" in text and "rows" in text and "MB" in text and "done" in text, text[-2000:]


def first_week(store: Path) -> str:
    return min(p.name.split("=")[1][:10] for p in (store / "call_logs" / "_manifests").iterdir())


# ---------------------------------------------------------------- spool too small


@pytest.fixture
def small_spool(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs with 2 KiB free: smaller than any partition of the test data, or any object."""
    mnt = tmp_path / "small-spool"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mnt)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"this test mounts a small tmpfs and needs root: {done.stderr.strip()}", pytrace=False)
    try:
        # leave 2 KiB free: less than any partition (8 KiB pages) or any Parquet object
        import shutil

        filler = mnt / "filler"
        filler.write_bytes(b"\0" * (shutil.disk_usage(mnt).free - 2048))
        assert shutil.disk_usage(mnt).free <= 2048
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_partition_bigger_than_the_spool_is_refused_up_front(
    filled: Settings, conn: psycopg.Connection, tmp_path: Path, small_spool: Path
) -> None:
    dsn = filled.dsn or ""
    expected = expected_archive(conn, filled)
    env = {"CALLVAULT_ARCHIVE_SPOOL": str(small_spool)}
    done = cli("archive", "--dsn", dsn, "--to", new_dir(tmp_path / "store").as_uri(), "--at", AT, env=env)
    assert done.returncode == 69, done.stderr
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    first = min(expected)
    assert first in line and "MB free" in line and "CALLVAULT_ARCHIVE_SPOOL" in line and "nothing was detached" in line
    assert all(exists(conn, n) for n in expected), "nothing detached"
    attached = {r[0] for r in conn.execute("SELECT inhrelid::regclass::text FROM pg_inherits")}
    assert set(expected) <= attached
    # the same with room: archived
    assert cli("archive", "--dsn", dsn, "--to", new_dir(tmp_path / "store").as_uri(), "--at", AT).returncode == 0
    week = first_week(tmp_path / "store")
    # restore downloads one object at a time: refused when the largest does not fit, nothing restored
    big = cli(
        "restore", "--dsn", dsn, "--to", new_dir(tmp_path / "store").as_uri(), "--week", week, "--into", "back", env=env
    )
    assert big.returncode == 69 and "nothing was restored" in big.stderr, big.stderr
    assert conn.execute("SELECT to_regclass('public.back')").fetchone() == (None,)


# ---------------------------------------------------------------- schema 1 objects beside schema 2


def write_schema1_archive(conn: psycopg.Connection, store: LocalStore, name: str, start: datetime) -> Manifest:
    """What callvault's first exporter wrote for partition ``name``: ids as Parquet UUID (pyarrow's
    uuid extension type), jsonb as JSON, one file per tenant, and a schema-1 manifest with Postgres'
    md5 fingerprints. Written here from the rows, as that exporter did."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([
        pa.field("id", pa.int64(), nullable=False), pa.field("tenant_id", pa.uuid(), nullable=False),
        pa.field("call_id", pa.uuid(), nullable=False),
        pa.field("started_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("ended_at", pa.timestamp("us", tz="UTC")), pa.field("duration_sec", pa.int32()),
        pa.field("transcript", pa.string()), pa.field("metadata", pa.json_(pa.string())),
    ])  # fmt: skip
    ident = sql.Identifier("public", name)
    tdir = layout.table_dir("public", "call_logs")
    fps = layout.pg_fingerprints(conn, ident, None, layout.MD5)
    tenants = {}
    for tenant, fp in fps.items():
        rows = conn.execute(
            sql.SQL(
                "SELECT id, tenant_id, call_id, started_at, ended_at, duration_sec, transcript, metadata::text "
                "FROM {} WHERE tenant_id = %s ORDER BY started_at, call_id"
            ).format(ident),
            (tenant,),
        ).fetchall()
        cols = list(zip(*rows, strict=True))

        def uuids(values: tuple[object, ...]) -> pa.Array:
            return pa.ExtensionArray.from_storage(pa.uuid(), pa.array([v.bytes for v in values], pa.binary(16)))  # type: ignore[attr-defined]

        table = pa.Table.from_arrays(
            [pa.array(cols[0], pa.int64()), uuids(cols[1]), uuids(cols[2]), pa.array(cols[3], schema[3].type),
             pa.array(cols[4], schema[4].type), pa.array(cols[5], pa.int32()), pa.array(cols[6], pa.string()),
             pa.ExtensionArray.from_storage(pa.json_(pa.string()), pa.array(cols[7], pa.string()))],
            schema=schema,
        )  # fmt: skip
        local = Path(store.root) / f".v1-{uuid.uuid4()}.parquet"
        pq.write_table(table, local, compression="zstd")
        key = layout.data_key(tdir, tenant, Interval.WEEKLY, start, 0, "parquet")
        sha = sha256_file(local)
        info = store.put_file(key, local, sha)
        local.unlink()
        tenants[tenant] = TenantEntry(fp, (ObjectEntry(key, fp.rows, info.size, sha),))
    manifest = Manifest(
        table="public.call_logs", partition=name, interval=Interval.WEEKLY, start=start,
        end=Interval.WEEKLY.add(start), fmt="parquet", tenants=tenants, created_at=datetime.now(UTC).isoformat(),
        schema_version=1, columns={**layout.ARCHIVE_COLUMNS, "tenant_id": "uuid", "call_id": "uuid"},
    )  # fmt: skip
    store.put_bytes(layout.manifest_key(tdir, Interval.WEEKLY, start), manifest.to_json())
    return manifest


def test_schema1_and_schema2_objects_restore_and_query_alike(
    filled: Settings, conn: psycopg.Connection, tmp_path: Path
) -> None:
    dsn = filled.dsn or ""
    expected = expected_archive(conn, filled)
    old, new = sorted(expected)[:2]
    root = new_dir(tmp_path / "store")
    store = LocalStore(root)
    store.check()
    start = conn.execute(
        "SELECT (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \\(''([^'']+)''\\)'))[1]::timestamptz "
        "FROM pg_class c WHERE c.oid = %s::regclass",
        (f"public.{old}",),
    ).fetchone()[0]
    counts = {n: dict(conn.execute(sql.SQL("SELECT tenant_id::text, count(*) FROM {} GROUP BY 1").format(
        sql.Identifier("public", n))).fetchall()) for n in (old, new)}  # fmt: skip
    # the old week goes to the store the old way, and leaves the database as the old archive left it
    write_schema1_archive(conn, store, old, start)
    conn.execute(sql.SQL("ALTER TABLE call_logs DETACH PARTITION {}").format(sql.Identifier("public", old)))
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier("public", old)))
    # every other week past retention goes the new way
    report = run_json("archive", "--dsn", dsn, "--to", root.as_uri(), "--at", AT)
    assert new in {p["partition"] for p in report["partitions"]}
    docs = {
        m.partition: m
        for m in (Manifest.from_json(p.read_bytes()) for p in (root / "call_logs" / "_manifests").iterdir())
    }
    assert docs[old].schema_version == 1 and docs[new].schema_version == 2
    assert {e.fingerprint.algo for e in docs[old].tenants.values()} == {layout.MD5}
    assert {e.fingerprint.algo for e in docs[new].tenants.values()} == {layout.SUMS_HASH}

    # archive query and read_calls read both kinds side by side (ids as text either way)
    got = query("SELECT week::VARCHAR, tenant_id::VARCHAR, count(*) FROM call_logs GROUP BY ALL",
                settings=filled, store_url=root.as_uri())  # fmt: skip
    by_week = {}
    for w, t, n in zip(*(got.column(i).to_pylist() for i in range(3)), strict=True):
        by_week.setdefault(w, {})[t] = n
    assert by_week[start.date().isoformat()] == counts[old]
    tenant = TENANTS[2]
    window = read_calls(tenant, since=start, until=Interval.WEEKLY.add(start), settings=filled, store_url=root.as_uri())
    assert window.num_rows == counts[old][tenant]
    assert {str(uuid.UUID(str(v))) for v in window.column("tenant_id").to_pylist()} == {tenant}

    # one restore command for both: each verified by its own fingerprint version
    for name in (old, new):
        week = docs[name].start.date().isoformat()
        side = run_json("restore", "--dsn", dsn, "--to", root.as_uri(), "--week", week, "--into", f"back_{name}")
        assert side["tenants"] == counts[name]
        assert dict(conn.execute(sql.SQL("SELECT tenant_id::text, count(*) FROM {} GROUP BY 1").format(
            sql.Identifier("public", f"back_{name}"))).fetchall()) == counts[name]  # fmt: skip
    # the restored rows are the archived rows, value for value (Postgres' md5 over both)
    assert pg_fingerprints(conn, f"back_{new}") == expected[new]
    assert pg_fingerprints(conn, f"back_{old}") == expected[old]


# ---------------------------------------------------------------- many tenants, few file descriptors


def _archive_interleaved(filled: Settings, conn: psycopg.Connection, store: Path) -> dict[str, Any]:
    """The filled table's rows rewritten with tenants interleaved in the heap (as real traffic is; the
    fixture inserts tenant after tenant), then archived into ``store``: what each partition held."""
    conn.execute("CREATE TEMP TABLE shuffled AS SELECT * FROM call_logs ORDER BY started_at, tenant_id")
    conn.execute("DELETE FROM call_logs")
    conn.execute("INSERT INTO call_logs SELECT * FROM shuffled ORDER BY started_at, tenant_id")
    expected = expected_archive(conn, filled)
    report = archive(filled, store_url=store.as_uri(), at=datetime.fromisoformat(AT))
    assert {p.partition for p in report.partitions if p.step_after == "dropped"} == set(expected)
    return expected


def test_more_tenants_than_open_files_roll_parts_and_lose_nothing(
    filled: Settings, conn: psycopg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With room for 2 open files and a buffer of a few KB, every tenant's rows come in many buffers
    and its spill segment is closed between them (a new one follows): none is lost, one Parquet part."""
    from callvault.archive import export

    closes: list[int] = []
    close_file = export._TenantFiles.close_file

    def counted(self: export._TenantFiles) -> None:
        closes.append(int(self.writer is not None))
        close_file(self)

    monkeypatch.setattr(export._TenantFiles, "close_file", counted)

    monkeypatch.setattr(export, "MAX_OPEN_FILES", 2)
    monkeypatch.setattr(export, "BUFFER_BYTES", 8 * 1024)
    monkeypatch.setattr(export, "ADBC_BATCH_BYTES", 4 * 1024)
    expected = _archive_interleaved(filled, conn, tmp_path)
    found = [Manifest.from_json(p.read_bytes()) for p in (tmp_path / "call_logs" / "_manifests").iterdir()]
    tenant_weeks = sum(len(m.tenants) for m in found)
    assert sum(closes) > 2 * tenant_weeks, "segments were closed to free descriptors and reopened"
    for m in found:
        for tenant, entry in m.tenants.items():
            assert [o.key.rsplit("/", 1)[1] for o in entry.objects] == [
                f"part-{i:05d}.parquet" for i in range(len(entry.objects))
            ]
            assert (
                sum(o.rows for o in entry.objects) == entry.fingerprint.rows == expected[m.partition][tenant]["md5"][0]
            )
    name = min(expected)
    week = next(m for m in found if m.partition == name).start.date()
    restore(filled, week, into="back", store_url=tmp_path.as_uri())
    assert pg_fingerprints(conn, "back") == expected[name]


def test_a_heavy_tenants_rows_go_straight_to_parquet_and_the_rest_spill(
    filled: Settings, conn: psycopg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With buffers of a few KB, one tenant may write its big slices of a buffer as row groups of their
    own during the scan (DIRECT_TENANTS=1, DIRECT_ROWS=10) while its small slices and every other tenant
    spill: the archive verifies, every tenant's rows are there once, and a restore gives the same table."""
    import pyarrow.parquet as pq

    from callvault.archive import export

    direct: list[int] = []
    write_group = export._TenantFiles.write_group

    def counted(self: export._TenantFiles, table: object) -> None:
        direct.append(getattr(table, "num_rows", 0))
        write_group(self, table)

    monkeypatch.setattr(export._TenantFiles, "write_group", counted)
    monkeypatch.setattr(export, "BUFFER_BYTES", 8 * 1024)
    monkeypatch.setattr(export, "ADBC_BATCH_BYTES", 4 * 1024)
    monkeypatch.setattr(export, "DIRECT_ROWS", 10)
    monkeypatch.setattr(export, "DIRECT_TENANTS", 1)
    expected = _archive_interleaved(filled, conn, tmp_path)
    assert len(direct) > 1 and min(direct) >= 10, "big slices went straight to Parquet"
    found = [Manifest.from_json(p.read_bytes()) for p in (tmp_path / "call_logs" / "_manifests").iterdir()]
    groups = []
    for m in found:
        for tenant, entry in m.tenants.items():
            assert sum(o.rows for o in entry.objects) == expected[m.partition][tenant]["md5"][0]
            groups += [pq.ParquetFile(tmp_path / o.key).metadata.num_row_groups for o in entry.objects]
    assert max(groups) > 1, "a direct tenant's file holds its direct row groups and then its spilled rows"
    name = min(expected)
    week = next(m for m in found if m.partition == name).start.date()
    restore(filled, week, into="back", store_url=tmp_path.as_uri())
    assert pg_fingerprints(conn, "back") == expected[name]


# ---------------------------------------------------------------- check sums: Postgres vs the export


def test_postgres_check_sums_equal_the_exports_at_edges(dsn: str, conn: psycopg.Connection, tmp_path: Path) -> None:
    """The ``sums+hash`` check sums Postgres computes (µs sums without a numeric per row) equal DuckDB's over
    the exported stream, for instants before 1970, far ahead, with µs fractions, NULLs, a DST night, and a
    session in a zone with a half-hour offset."""
    from callvault.archive import export

    conn.execute(
        "CREATE TABLE edge_sums (id bigint, tenant_id uuid, call_id uuid, started_at timestamptz, "
        "ended_at timestamptz, duration_sec int, transcript text, metadata jsonb)"
    )
    instants = [
        "1969-07-20 20:17:40.000001+00", "2099-12-31 23:59:59.999999+00", "2026-03-29 01:30:00.123457+01",
        "2000-02-29 12:00:00.5+00", "0900-01-01 00:00:00.000001+00", "2026-11-01 01:59:59.999999-04",
    ]  # fmt: skip
    tenants = [uuid.UUID(int=1, version=4), uuid.UUID(int=2, version=4)]
    with conn.cursor() as cur:
        for i, at in enumerate(instants * 3):
            ended = None if i % 3 == 0 else at
            cur.execute(
                "INSERT INTO edge_sums VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (i + 1, tenants[i % 2], uuid.uuid4(), at, ended, None if i % 4 == 0 else i, "é" * i or None,
                 None if i % 5 == 0 else '{"k": "v\\u00e9", "n": 1.50}'),
            )  # fmt: skip
    conn.commit()
    conn.execute("SET TimeZone = 'America/St_Johns'")
    table = sql.Identifier("public", "edge_sums")
    postgres = layout.pg_fingerprints(conn, table, None, layout.SUMS_HASH)
    exported = export.export_partition_parquet(dsn, conn, table, lambda t: tmp_path / t)
    assert set(postgres) == {str(t) for t in tenants}
    for tenant, fp in postgres.items():
        assert fp.postgres_part() == exported.fingerprints[tenant].postgres_part()
    one = next(iter(postgres.values()))
    assert one.check and int(one.check["started_us_sum"]) < 0  # the 0900 and 1969 instants weigh in
