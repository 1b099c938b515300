"""Query the archive in place: DuckDB over the Parquet layout, local or S3, without restoring.

The archive is exposed to DuckDB as a pyarrow dataset (pyarrow's own S3 client: no DuckDB extension
has to be downloaded) named after the table, e.g. ``call_logs``, with the table's columns plus the
period column from the path (``week``/``day``/``month``, a DATE). DuckDB pushes column selection and
filters down into the dataset, so ``WHERE week = DATE '2024-03-04'`` and ``started_at`` ranges skip
files and row groups.

:func:`read_calls` is the targeted form: one tenant, a time window, only that tenant's objects listed
and read; it returns a pyarrow Table.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

from callvault._compat import renamed
from callvault.archive import layout
from callvault.archive.location import read_store
from callvault.config import Settings, from_env
from callvault.errors import CallvaultError, InvalidSetting

_PERIODS = tuple(layout.PERIOD_KEY.values())
_LONGEST_PERIOD = timedelta(days=31)


def _dataset(settings: Settings, store_url: str | None, paths: list[str] | None = None) -> Any:
    import pyarrow as pa
    import pyarrow.dataset as ds

    from callvault.archive.export import arrow_schema

    store = read_store(settings, store_url)
    fs, root = store.arrow_filesystem()
    base = f"{root}/{layout.table_dir(settings.schema, settings.table)}"
    keys = [k for k in (paths if paths is not None else _data_keys(store, settings)) if k.endswith(".parquet")]
    period = _period_name(keys)
    partitioning = ds.partitioning(pa.schema([(period, pa.date32())]), flavor="hive")
    schema = arrow_schema().append(pa.field(period, pa.date32()))
    files = [f"{root}/{k}" for k in keys]
    return ds.dataset(files, schema=schema, format="parquet", filesystem=fs, partitioning=partitioning,
                      partition_base_dir=base)  # fmt: skip


def _data_keys(store: Any, settings: Settings, prefix: str | None = None) -> list[str]:
    tdir = layout.table_dir(settings.schema, settings.table)
    return [
        o.key for o in store.iter_objects(prefix or tdir) if "/_manifests/" not in o.key and o.key.endswith(".parquet")
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
    dataset = _dataset(settings, store_url)
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        con.register(settings.table, dataset)
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
    import pyarrow.dataset as ds

    settings = settings or from_env()
    if start.tzinfo is None or end.tzinfo is None or not start < end:
        raise InvalidSetting("read_calls needs an aware start < end (e.g. datetime(2024, 3, 1, tzinfo=UTC))")
    try:
        tenant = str(uuid.UUID(str(tenant_id)))
    except ValueError:
        raise InvalidSetting(f"tenant {tenant_id!r} is not a UUID") from None
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

        return arrow_schema().empty_table()
    dataset = _dataset(settings, store.url, keys)
    flt = (ds.field("started_at") >= start) & (ds.field("started_at") < end)
    table = dataset.to_table(filter=flt, columns=columns)
    return table.sort_by([("started_at", "ascending"), ("id", "ascending")]) if columns is None else table


def _period_of(key: str) -> date | None:
    for part in key.split("/"):
        name, _, value = part.partition("=")
        if name in _PERIODS:
            try:
                return date.fromisoformat(value)
            except ValueError:
                raise CallvaultError(f"archive object {key} has a malformed period {value!r}") from None
    return None
