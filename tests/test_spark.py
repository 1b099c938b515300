"""The archive is readable by a distributed engine (issue 15, item 4): Apache Spark, DuckDB and
pyarrow.dataset read what ``callvault archive`` wrote to a ``file://`` store knowing only the documented
layout (docs/archive.md, "Reading the archive with Spark, Trino, Athena, DuckDB"):

    <store>/call_logs/tenant_id=<uuid>/week=<YYYY-MM-DD>/part-00000.parquet
    <store>/call_logs/_manifests/week=<YYYY-MM-DD>.json      (skipped by Hive readers: leading "_")

No callvault code reads anything here: each engine discovers the Hive partitions itself, and per tenant
and week its row count and a checksum of the call ids (sum of the first 15 hex digits of
md5(call_id text)) must equal what Postgres held before the archive dropped the partitions.

Spark runs in local mode (``local[1]``, one JVM for the module). Java (17+) and pyspark are required:
when either is missing the tests fail and say how to install it; they never skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from callvault.embedded import Cluster
from tests.conftest import TEMPLATE, _drop_db
from tests.helpers import run, run_json
from tests.test_archive import AT, TENANTS, fill

Totals = dict[tuple[str, str], tuple[int, int]]  # (tenant_id, week) -> (rows, call_id checksum)

# The same checksum in every engine: the first 15 hex digits (60 bits) of md5 of the call id's text
# (lower-case, hyphenated), summed exactly (numeric / decimal(38,0) / hugeint / Python int).
PG_TOTALS = """SELECT tenant_id::text, count(*),
                      sum(('x0' || substr(md5(call_id::text), 1, 15))::bit(64)::bigint)
               FROM {} GROUP BY 1"""
DUCK_TOTALS = """SELECT tenant_id::VARCHAR, week::VARCHAR, count(*),
                        sum(('0x' || substr(md5(call_id::VARCHAR), 1, 15))::BIGINT)
                 FROM read_parquet('{glob}', hive_partitioning = true) GROUP BY ALL"""
SPARK_HASH = "CAST(conv(substr(md5(CAST(call_id AS BINARY)), 1, 15), 16, 10) AS DECIMAL(38, 0))"

# What Spark sees, as docs/archive.md documents it (partition columns from the path, as strings).
SPARK_TYPES = {
    "id": "bigint",
    "tenant_id": "string",
    "call_id": "string",
    "started_at": "timestamp",
    "ended_at": "timestamp",
    "duration_sec": "int",
    "transcript": "string",
    "metadata": "string",
    "week": "string",
}
SPARK_TABLE = """CREATE TABLE call_logs_archive (
    id BIGINT, call_id STRING, started_at TIMESTAMP, ended_at TIMESTAMP, duration_sec INT,
    transcript STRING, metadata STRING, tenant_id STRING, week DATE)
USING parquet PARTITIONED BY (tenant_id, week) LOCATION '{location}'"""

UUID_COLUMNS_HINT = (
    "Spark cannot read the archive's tenant_id/call_id columns: they are Parquet "
    "FIXED_LEN_BYTE_ARRAY(16) with the UUID logical type, which Spark rejects when it infers the schema "
    "([PARQUET_TYPE_ILLEGAL]) and refuses to read as STRING ([PARQUET_COLUMN_DATA_TYPE_MISMATCH]). "
    "docs/archive.md promises plain Parquet STRING (UTF8) ids; this passes once the exporter writes them."
)


@pytest.fixture(scope="module")
def archive(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Totals]]:
    """A filled table archived (the CLI, ``--at AT``) to a local store; what Postgres held before."""
    name = f"cv_spark_{os.getpid()}"
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(TEMPLATE)))
    dsn = cluster.dsn(name)
    root = tmp_path_factory.mktemp("spark-store")
    try:
        run("init", "--dsn", dsn)
        expected: Totals = {}
        with psycopg.connect(dsn, autocommit=True) as conn:
            fill(conn)
            retire = run_json("plan", "--dsn", dsn, "--at", AT)["retire"]
            for p in retire:  # the documented week label: the partition's first day, in UTC
                week = datetime.fromisoformat(p["from"]).astimezone(UTC).date().isoformat()
                q = sql.SQL(PG_TOTALS).format(sql.Identifier("public", p["name"]))
                for tenant, rows, checksum in conn.execute(q).fetchall():
                    expected[(tenant, week)] = (rows, int(checksum))
        assert len(retire) >= 2 and len(expected) == len(retire) * len(TENANTS), "test data: weeks x tenants"
        report = run_json("archive", "--dsn", dsn, "--to", root.as_uri(), "--at", AT)
        assert sorted(p["partition"] for p in report["partitions"]) == sorted(p["name"] for p in retire)
        assert all(p["step_after"] == "dropped" for p in report["partitions"]), report
        assert (root / "call_logs" / "_manifests").is_dir(), "manifests beside the data, for the readers to skip"
        yield root, expected
    finally:
        _drop_db(cluster, name)


# -- Spark ------------------------------------------------------------------------------------------


def _java() -> str:
    """The java Spark will start (JAVA_HOME's, else the PATH's), checked to be 17 or newer."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home, "bin", "java")) if home else shutil.which("java")
    how = "run scripts/install-system-deps.sh (Debian's openjdk-17-jre-headless) or point JAVA_HOME at a JRE 17+"
    if not java or not os.access(java, os.X_OK):
        pytest.fail(f"Java is missing: Spark needs a Java 17+ runtime; {how}", pytrace=False)
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    major = (int(m[2] or 0) if m[1] == "1" else int(m[1])) if m else 0
    if major < 17:
        pytest.fail(f"{java} is not Java 17+ ({out.stderr.strip()!r}); {how}", pytrace=False)
    return java


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One small local Spark for the module (1 core, 512 MB, no UI, loopback only), stopped at the end."""
    _java()
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        pytest.fail("pyspark is missing: it is pinned in the dev extra; run `make venv` (pip install -e '.[dev]')")
    saved = os.environ.get("SPARK_LOCAL_IP")
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
    # The JVM starts without libfaketime (CI runs the suite under `faketime`): under it the JVM's timed waits
    # spin at ~170% CPU for the rest of the session. What Spark reads here does not depend on the clock.
    faked = {k: os.environ.pop(k) for k in list(os.environ) if k == "LD_PRELOAD" or k.startswith("FAKETIME")}
    try:
        session = (
            SparkSession.builder.master("local[1]")
            .appName("callvault-archive-readable")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.driver.memory", "512m")
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            # startup, not throughput: C1 only and the serial GC make a tiny job ~40% faster
            .config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
            .config("spark.sql.shuffle.partitions", "1")
            .config("spark.sql.codegen.wholeStage", "false")
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.sql.warehouse.dir", str(tmp_path_factory.mktemp("spark-warehouse")))
            # tenant_id and week from the path stay strings (else week would be inferred as a date)
            .config("spark.sql.sources.partitionColumnTypeInference.enabled", "false")
            .getOrCreate()
        )
    except Exception as exc:
        pytest.fail(f"Spark did not start (java: {_java()}): {exc}", pytrace=False)
    finally:
        os.environ.update(faked)
    session.sparkContext.setLogLevel("OFF")
    yield session
    session.stop()
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    if gateway is not None:  # the JVM would otherwise live until pytest exits
        proc = getattr(gateway, "proc", None)
        gateway.shutdown()
        SparkContext._gateway = None
        SparkContext._jvm = None
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
    if saved is None:
        os.environ.pop("SPARK_LOCAL_IP", None)
    else:
        os.environ["SPARK_LOCAL_IP"] = saved


@contextmanager
def uuid_columns_explained() -> Iterator[None]:
    """Turn Spark's error about the Parquet UUID logical type into what it means for the archive."""
    try:
        yield
    except Exception as exc:
        text = str(exc)
        if "FIXED_LEN_BYTE_ARRAY" in text:
            first = next((line for line in text.splitlines() if "FIXED_LEN_BYTE_ARRAY" in line), text)
            pytest.fail(f"{UUID_COLUMNS_HINT}\nSpark said: {first.strip()[:600]}", pytrace=False)
        raise


def spark_totals(rows: list[Any]) -> Totals:
    return {(r[0], str(r[1])): (int(r[2]), int(r[3])) for r in rows}


def test_spark_reads_the_archive_by_its_layout(archive: tuple[Path, Totals], spark: Any) -> None:
    root, expected = archive
    with uuid_columns_explained():
        df = spark.read.parquet(f"{root.as_uri()}/call_logs")  # Hive discovery; _manifests skipped
        assert dict(df.dtypes) == SPARK_TYPES
        df.createOrReplaceTempView("archived")
        got = spark.sql(f"SELECT tenant_id, week, count(*), sum({SPARK_HASH}) FROM archived GROUP BY 1, 2")
        assert spark_totals(got.collect()) == expected


def test_spark_sql_table_over_the_archive(archive: tuple[Path, Totals], spark: Any) -> None:
    """The Spark SQL recipe of docs/archive.md: an external partitioned table, then MSCK REPAIR TABLE."""
    root, expected = archive
    spark.sql("DROP TABLE IF EXISTS call_logs_archive")
    spark.sql(SPARK_TABLE.format(location=f"{root.as_uri()}/call_logs"))
    assert spark.sql("SELECT count(*) FROM call_logs_archive").first()[0] == 0, "no partitions before the repair"
    spark.sql("MSCK REPAIR TABLE call_logs_archive")
    assert spark.sql("SHOW PARTITIONS call_logs_archive").count() == len(expected)
    with uuid_columns_explained():
        got = spark.sql(f"SELECT tenant_id, week, count(*), sum({SPARK_HASH}) FROM call_logs_archive GROUP BY 1, 2")
        assert spark_totals(got.collect()) == expected


# -- DuckDB and pyarrow.dataset ------------------------------------------------------------------------


def test_duckdb_reads_the_archive_by_its_layout(archive: tuple[Path, Totals]) -> None:
    import duckdb

    root, expected = archive
    glob = f"{root}/call_logs/*/*/*.parquet"
    with duckdb.connect() as con:
        rows = con.execute(DUCK_TOTALS.format(glob=glob)).fetchall()
    assert {(t, w): (int(n), int(h)) for t, w, n, h in rows} == expected


def test_pyarrow_dataset_reads_the_archive_by_its_layout(archive: tuple[Path, Totals]) -> None:
    import hashlib

    import pyarrow as pa
    import pyarrow.dataset as ds

    root, expected = archive
    try:  # partition fields from the path (strings) merge with the files' own tenant_id column
        dataset = ds.dataset(root / "call_logs", format="parquet", partitioning="hive")
    except pa.ArrowTypeError as exc:
        pytest.fail(f"the files' tenant_id is not a plain string, as docs/archive.md documents: {exc}", pytrace=False)
    assert dataset.schema.field("tenant_id").type == pa.string()
    assert dataset.schema.field("call_id").type == pa.string()
    table = dataset.to_table(columns=["tenant_id", "week", "call_id"])
    got: dict[tuple[str, str], list[int]] = {}
    for tenant, week, call_id in zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True):
        entry = got.setdefault((tenant, str(week)), [0, 0])
        entry[0] += 1
        entry[1] += int(hashlib.md5(call_id.encode()).hexdigest()[:15], 16)
    assert {k: (n, h) for k, (n, h) in got.items()} == expected


def test_spark_and_duckdb_read_the_tables_own_columns_across_weeks(
    cluster: Cluster, spark: Any, tmp_path: Path
) -> None:
    """Issue 28: a column added between two archive runs is in the newer week's objects only; Spark
    (``mergeSchema``, as docs/archive.md says) and DuckDB (``union_by_name``) read it, NULL in the older."""
    import duckdb

    name = f"cv_spark_own_{os.getpid()}"
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(TEMPLATE)))
    dsn = cluster.dsn(name)
    try:
        run("init", "--dsn", dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            fill(conn, per_tenant_week=3)
            now = conn.execute("SELECT now()").fetchone()[0]
            store = tmp_path.as_uri()
            run("archive", "--dsn", dsn, "--to", store, "--at", (now + timedelta(weeks=1)).isoformat())
            run("columns", "add", "agent_id", "text", "--dsn", dsn)
            run("columns", "add", "cost_cents", "integer", "--dsn", dsn)
            conn.execute("UPDATE call_logs SET agent_id = 'a-' || (id % 3), cost_cents = id % 100")
            second = run_json("archive", "--dsn", dsn, "--to", store, "--at", (now + timedelta(weeks=2)).isoformat())
        moved = sum(p["rows"] for p in second["partitions"])
        df = spark.read.option("mergeSchema", "true").parquet(f"{store}/call_logs")
        types = dict(df.dtypes)
        assert types["agent_id"] == "string" and types["cost_cents"] == "int"
        weeks = {r[0]: (r[1], r[2]) for r in df.groupBy("week").agg(
            {"*": "count", "agent_id": "count"}).select("week", "count(1)", "count(agent_id)").collect()}  # fmt: skip
        assert len(weeks) == 2
        older, newer = (weeks[w] for w in sorted(weeks))
        assert older[1] == 0 and older[0] > 0, "the week archived before the column: NULL"
        assert newer[1] == newer[0] == moved, "the week archived after: every row has it"
        with duckdb.connect() as con:
            got = con.execute(
                f"SELECT count(agent_id), count(*) FROM read_parquet('{tmp_path}/call_logs/*/*/*.parquet', "
                "hive_partitioning = true, union_by_name = true)"
            ).fetchone()
        assert got == (moved, older[0] + moved)
    finally:
        _drop_db(cluster, name)
