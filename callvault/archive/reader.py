"""Query the archive in place: DuckDB over the Parquet layout, local or S3, without restoring.

The archive is exposed to DuckDB as a pyarrow dataset (pyarrow's own S3 client: no DuckDB extension
has to be downloaded) named after the table, e.g. ``call_logs``, with the table's columns plus the
period column from the path (``week``/``day``/``month``, a DATE). DuckDB pushes column selection and
filters down into the dataset, so ``WHERE week = DATE '2024-03-04'`` and ``started_at`` ranges skip
files and row groups.

:func:`read_calls` is the targeted form: one tenant, a time window, only that tenant's objects listed
and read; it returns a pyarrow Table.

:func:`tenant_page` and :func:`find_call` are the archive tier of :class:`callvault.query.Reader`: one
tenant's calls of a window in the hot query's order and keyset (``(started_at, id)``, newest first), and
one call by ``(tenant, call_id, started_at)``. The manifests say which periods are archived (and which
were pruned for the tenant); only the objects the manifest lists under ``tenant_id=<uuid>/`` are read,
through DuckDB, with every row checked to be the tenant's (the archive has no row-level security). Ids
are read alike whether a file holds them as text (the exporter now), with the Parquet UUID type (older
archives) or as 16 bare bytes; Parquet and CSV periods alike.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

from callvault import columns as columns_module
from callvault._compat import renamed
from callvault.archive import layout
from callvault.archive.location import read_store
from callvault.config import Settings, from_env
from callvault.errors import CallvaultError, InvalidSetting
from callvault.tenancy.ids import tenant_value
from callvault.window import aware_window

_PERIODS = tuple(layout.PERIOD_KEY.values())
_LONGEST_PERIOD = timedelta(days=31)


def _uuid_keys(store: Any, tdir: str, keys: list[str]) -> set[str]:
    """Which of ``keys`` were written by the first exporter (manifest schema 1: ids as Parquet UUID):
    objects of Parquet tenants whose fingerprint is ``md5``, read from the manifests of the periods
    the keys belong to (one small read per period)."""
    old: set[str] = set()
    period_name = _period_name(keys)
    for day in sorted({d for d in (_period_of(k) for k in keys) if d is not None}):
        key = f"{layout.manifests_prefix(tdir)}/{period_name}={day.isoformat()}.json"
        if store.head(key) is None:
            continue
        manifest = layout.Manifest.from_json(store.get_bytes(key))
        if manifest.fmt != "parquet":
            continue
        for entry in manifest.tenants.values():
            if entry.fingerprint.algo == layout.MD5:
                old |= {o.key for o in entry.objects}
    return old


def _register(con: Any, name: str, settings: Settings, store_url: str | None, paths: list[str] | None = None) -> None:
    """Make the archive (or the objects ``paths``) the DuckDB view ``name``: the table's columns with
    ids as text, plus the period column from the path. Objects of both exporters are read side by side:
    pyarrow datasets (one per id type; pyarrow's own S3 client) under one ``UNION ALL BY NAME``."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    from callvault.archive.export import arrow_schema

    store = read_store(settings, store_url)
    fs, root = store.arrow_filesystem()
    tdir = layout.table_dir(settings.schema, settings.table)
    base = f"{root}/{tdir}"
    keys = [k for k in (paths if paths is not None else _data_keys(store, settings)) if k.endswith(".parquet")]
    period = _period_name(keys)
    partitioning = ds.partitioning(pa.schema([(period, pa.date32())]), flavor="hive")
    new_schema = pa.schema([*arrow_schema(), *_extra_fields(fs, root, keys)]).append(pa.field(period, pa.date32()))
    old_schema = new_schema.set(1, pa.field("tenant_id", pa.uuid(), nullable=False)).set(
        2, pa.field("call_id", pa.uuid(), nullable=False)
    )
    old = _uuid_keys(store, tdir, keys) if keys else set()
    parts: list[str] = []
    for tag, schema, group in (("new", new_schema, [k for k in keys if k not in old]),
                               ("old", old_schema, [k for k in keys if k in old])):  # fmt: skip
        if not group and (tag == "old" or old):
            continue  # an empty part only when there is nothing at all (the view keeps its columns)
        dataset = ds.dataset([f"{root}/{k}" for k in group], schema=schema, format="parquet", filesystem=fs,
                             partitioning=partitioning, partition_base_dir=base)  # fmt: skip
        con.register(f"cv_{tag}_{len(parts)}", dataset)
        ids = " REPLACE (tenant_id::VARCHAR AS tenant_id, call_id::VARCHAR AS call_id)" if tag == "old" else ""
        parts.append(f'SELECT *{ids} FROM "cv_{tag}_{len(parts)}"')
    csv_keys = [k for k in (paths if paths is not None else _data_keys(store, settings)) if k.endswith(".csv")]
    if csv_keys:
        parts.append(_csv_part(con, fs, root, base, csv_keys, _period_name(csv_keys), len(parts)))
    quoted = name.replace('"', '""')  # DuckDB identifier (the table name may hold a quote)
    con.execute(f'CREATE OR REPLACE TEMP VIEW "{quoted}" AS ' + " UNION ALL BY NAME ".join(parts))


def _extra_fields(fs: Any, root: str, keys: list[str]) -> list[Any]:
    """The table's own columns (extras) the objects hold, from one object's footer per period directory:
    a column added later is in the newer periods only, and the view gives the older ones NULL there."""
    import pyarrow.parquet as pq

    seen: dict[str, Any] = {}
    dirs: set[str] = set()
    for key in keys:
        folder = key.rsplit("/", 1)[0].split("/tenant_id=")[0] + "/" + key.rsplit("/", 2)[-2]
        if folder in dirs:
            continue
        dirs.add(folder)
        for f in pq.read_schema(f"{root}/{key}", filesystem=fs):
            if f.name not in columns_module.NAMES and f.name not in _PERIODS and f.name not in seen:
                seen[f.name] = f.with_nullable(True)
    return list(seen.values())


def _csv_part(con: Any, fs: Any, root: str, base: str, keys: list[str], period: str, n: int) -> str:
    """The CSV objects (``--format csv``: the seed's ``COPY ... CSV HEADER``) as one more part of the view:
    read as text by pyarrow (its filesystem, S3 included), typed by DuckDB. An unquoted empty field is
    NULL and a quoted one is the empty string, as COPY wrote them."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.dataset as ds

    text = pa.schema([(c, pa.string()) for c in columns_module.NAMES])
    fmt = ds.CsvFileFormat(
        convert_options=pcsv.ConvertOptions(
            column_types=text, strings_can_be_null=True, quoted_strings_can_be_null=False, null_values=[""]
        )
    )
    partitioning = ds.partitioning(pa.schema([(period, pa.date32())]), flavor="hive")
    dataset = ds.dataset([f"{root}/{k}" for k in keys], schema=text.append(pa.field(period, pa.date32())),
                         format=fmt, filesystem=fs, partitioning=partitioning, partition_base_dir=base)  # fmt: skip
    con.register(f"cv_csv_{n}", dataset)
    types = {c.name: c.duck for c in columns_module.COLUMNS}
    typed = ", ".join(
        f'"{c}"' if types[c] in ("VARCHAR", "UUID") else f'CAST("{c}" AS {types[c]}) AS "{c}"'
        for c in columns_module.NAMES
    )
    return f'SELECT {typed}, "{period}" FROM "cv_csv_{n}"'


def _data_keys(store: Any, settings: Settings, prefix: str | None = None) -> list[str]:
    """The data objects (Parquet and CSV) under the table's directory (or ``prefix``)."""
    tdir = layout.table_dir(settings.schema, settings.table)
    return [
        o.key
        for o in store.iter_objects(prefix or tdir)
        if "/_manifests/" not in o.key and o.key.endswith((".parquet", ".csv"))
    ]


def _period_name(keys: list[str]) -> str:
    for key in keys:
        for part in key.split("/"):
            name = part.split("=", 1)[0]
            if name in _PERIODS:
                return name
    return "week"


def query(sql_text: str, *, settings: Settings | None = None, store_url: str | None = None) -> Any:
    """Run ``sql_text`` in DuckDB with the archive as a table named after the hot table; a pyarrow Table.

    The table has the hot table's columns plus the period column from the layout (``week``, ``day``
    or ``month``, a DATE); filters on it and on ``started_at`` skip files and row groups. Session time
    zone is UTC. Read only: nothing is restored, the database is not touched.

    :param sql_text: one DuckDB statement; a statement without a result gives an empty table.
    :param settings: which table's archive (default :func:`callvault.config.from_env`).
    :param store_url: the archive store, ``s3://bucket/prefix`` or ``file:///dir`` (default the
        configured ``archive_url``, or the embedded home's archive when no DSN is set).
    :raises InvalidSetting: DuckDB refused the statement, or no store is configured (exit code 2).
    :raises StoreUnavailable: a store named explicitly does not exist or cannot be read (exit code 69).

    Example:

        weekly = query("SELECT week, count(*) AS calls FROM call_logs GROUP BY 1 ORDER BY 1",
                       settings=settings, store_url="s3://calls-archive/prod")
        weekly.to_pylist()      # [{'week': datetime.date(2024, 3, 4), 'calls': 1200}, ...]
    """
    import duckdb

    settings = settings or from_env()
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        _register(con, settings.table, settings, store_url)
        try:
            rel = con.sql(sql_text)
            if rel is None:  # a statement without a result (SET, CREATE VIEW ...)
                import pyarrow as pa

                return pa.table({})
            return rel.to_arrow_table()
        except duckdb.Error as exc:
            raise InvalidSetting(
                f"archive query failed: {exc}. The archive is the table {settings.table!r} with the columns of "
                f"the hot table plus its period column (e.g. week DATE)"
            ) from exc


def read_calls(
    tenant_id: str | uuid.UUID,
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    settings: Settings | None = None,
    store_url: str | None = None,
    columns: list[str] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> Any:
    """All archived calls of one tenant with ``start <= started_at < end`` as a pyarrow Table.

    Only that tenant's objects of the periods overlapping the window are listed and read. With all
    columns the rows are sorted by ``started_at``, then ``id``; no match gives an empty table with the
    archive's columns.

    :param tenant_id: the tenant's UUID (a ``uuid.UUID`` or its text).
    :param start: inclusive lower bound; must be timezone-aware.
    :param end: exclusive upper bound; must be timezone-aware and after ``start``.
    :param columns: read only these columns (unsorted then); default all.
    :param settings: which table's archive (default :func:`callvault.config.from_env`).
    :param store_url: the archive store (default as for :func:`query`).
    :raises InvalidSetting: a naive or empty window, a tenant that is not a UUID, or no store configured
        (exit code 2).
    :raises StoreUnavailable: the store cannot be reached or read (exit code 69).
    :raises CallvaultError: an archive object's path has a malformed period.

    Example:

        calls = read_calls(tenant, datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 4, 1, tzinfo=UTC),
                           settings=settings, store_url="s3://calls-archive/prod")
        calls.num_rows, calls.column("call_id")
    """
    start = renamed("read_calls", "start", start, "since", since)
    end = renamed("read_calls", "end", end, "until", until)
    if start is None or end is None:
        raise InvalidSetting("read_calls needs since= and until= (timezone-aware datetimes)")

    settings = settings or from_env()
    start, end = aware_window(start, end)
    tenant = tenant_value(tenant_id)
    store = read_store(settings, store_url)
    tdir = layout.table_dir(settings.schema, settings.table)
    keys = []
    for key in _data_keys(store, settings, layout.tenant_prefix(tdir, tenant)):
        period = _period_of(key)
        if period is None:
            continue
        p0 = datetime(period.year, period.month, period.day, tzinfo=UTC)
        if p0 < end.astimezone(UTC) and p0 + _LONGEST_PERIOD > start.astimezone(UTC):
            keys.append(key)
    if not keys:
        from callvault.archive.export import arrow_schema

        empty = arrow_schema().empty_table()
        return empty.select(columns) if columns else empty
    import duckdb

    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        _register(con, "cv_calls", settings, store.url, keys)
        known = [r[0] for r in con.execute("DESCRIBE cv_calls").fetchall()]
        unknown = [c for c in columns or [] if c not in known]
        if unknown:
            raise InvalidSetting(f"read_calls: unknown column(s) {unknown}; the archive has {known}")
        cols = ", ".join(f'"{c}"' for c in columns) if columns else "*"
        order = "" if columns else " ORDER BY started_at, id"
        table = con.sql(
            f"SELECT {cols} FROM cv_calls WHERE started_at >= $lo AND started_at < $hi{order}",
            params={"lo": start.astimezone(UTC), "hi": end.astimezone(UTC)},
        ).to_arrow_table()
    return table


def _period_of(key: str) -> date | None:
    for part in key.split("/"):
        name, _, value = part.partition("=")
        if name in _PERIODS:
            try:
                return date.fromisoformat(value)
            except ValueError:
                raise CallvaultError(f"archive object {key} has a malformed period {value!r}") from None
    return None


# -- one tenant's calls of a window, read like the hot query (the Reader's archive tier) --------------
