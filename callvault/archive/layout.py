"""Archive layout, manifest and the content fingerprint. Pure: nothing here does I/O.

Layout (Hive-style, so per-tenant retention and erasure are prefix operations)::

    <root>/<table>/tenant_id=<uuid>/<period>=<YYYY-MM-DD>/part-00000.parquet
    <root>/<table>/_manifests/<period>=<YYYY-MM-DD>.json

``<period>`` is ``week``, ``day`` or ``month`` after the table's partition interval, the date is the
partition's first day (UTC). ``<table>`` is the table name, or ``<schema>.<table>`` outside ``public``.
Names starting with ``_`` are skipped by Hive readers (Spark, DuckDB, pyarrow), so manifests never show
up as data.

The *fingerprint* of a tenant's rows must agree, computed on both sides of the export, before
anything is dropped. Two versions exist (``Fingerprint.algo``):

* ``md5`` (manifest schema 1, and every CSV archive): per row md5 of ``id|call_id|started_at µs|
  ended_at µs|duration|md5(transcript)|md5(metadata text)`` (``~`` for NULL), the first 60 bits of
  each row digest summed. Computed by Postgres over the detached table and by DuckDB over the files
  read back; Postgres recomputes it over restored rows.
* ``sums+hash`` (manifest schema 2, Parquet since the ADBC exporter): two parts. *check*: sums any
  engine computes exactly — rows, sum of ids, of started/ended µs, of durations, the byte lengths of
  transcript and metadata text and the non-NULL count of each nullable column. Postgres computes them
  over the detached table while the export runs; they must equal the same sums over the Arrow stream
  the exporter wrote (so the C++ decoder is checked against Postgres itself) and over the Parquet read
  back, and Postgres checks them again over restored rows. *digest*: the sum of DuckDB's 64-bit
  ``hash()`` of every row (all columns), over the Arrow stream as it is written and over the Parquet
  read back by DuckDB's own reader (independent of pyarrow's writer). A changed byte anywhere changes
  the digest; a lost, doubled or truncated row changes the check. The digest is only ever compared
  within one DuckDB version (the verify step; a resumed run under another version exports again).

Both are sums, so row order does not matter.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from psycopg import sql

from callvault import columns
from callvault.plan import Interval

SCHEMA_VERSION = 2  # 2: ids as strings, the sums+hash fingerprint (1 is still read)
FORMATS = ("parquet", "csv")
PART_ROWS = 1_000_000  # rows per data file before rolling to part-00001

# Parquet/DuckDB type of each column, as recorded in the manifest.
ARCHIVE_COLUMNS: dict[str, str] = columns.manifest_types()
PERIOD_KEY = {Interval.DAILY: "day", Interval.WEEKLY: "week", Interval.MONTHLY: "month"}

_PG_ROW = (
    "concat_ws('|', id, call_id, (extract(epoch FROM started_at) * 1000000)::bigint, "
    "coalesce(((extract(epoch FROM ended_at) * 1000000)::bigint)::text, '~'), coalesce(duration_sec::text, '~'), "
    "coalesce(md5(transcript), '~'), coalesce(md5(metadata::text), '~'))"
)
_DUCK_ROW = (
    "concat_ws('|', id, call_id, epoch_us(started_at), coalesce(epoch_us(ended_at)::varchar, '~'), "
    "coalesce(duration_sec::varchar, '~'), coalesce(md5(transcript), '~'), coalesce(md5(metadata::varchar), '~'))"
)
# Both return: tenant_id (text), rows, fingerprint (decimal text), min/max started_at in µs.
PG_FINGERPRINT = (
    "SELECT tenant_id::text, count(*), "
    f"coalesce(sum(('x' || substr(md5({_PG_ROW}), 1, 15))::bit(60)::bigint), 0)::text, "
    "min((extract(epoch FROM started_at) * 1000000)::bigint), max((extract(epoch FROM started_at) * 1000000)::bigint) "
    "FROM {} {} GROUP BY tenant_id ORDER BY tenant_id"
)
# The same per file group: ``grp`` is a column the source provides (the file each row came from).
DUCK_FINGERPRINT_BY = (
    f"SELECT grp, count(*), coalesce(sum(('0x' || substr(md5({_DUCK_ROW}), 1, 15))::BIGINT), 0)::VARCHAR, "
    "min(epoch_us(started_at)), max(epoch_us(started_at)) FROM {source} GROUP BY grp"
)


def per_tenant_sql(template: str, table: sql.Identifier, where: sql.Composable | None = None) -> sql.Composed:
    """A per-tenant query of ``table`` (optionally filtered by ``where``): :data:`PG_FINGERPRINT` gives
    Postgres' ``md5`` fingerprint (tenant, rows, digest, min µs, max µs), :data:`PG_CHECK` its check sums
    (tenant, rows, *CHECK_NAMES, min µs, max µs)."""
    return sql.SQL(template).format(table, where if where is not None else sql.SQL(""))


MD5, SUMS_HASH = "md5", "sums+hash"

# The check sums of the ``sums+hash`` fingerprint, in this order, as decimal text.
CHECK_NAMES = (
    "id_sum", "started_us_sum", "ended_us_sum", "ended_n", "duration_sum", "duration_n",
    "transcript_bytes", "transcript_n", "metadata_bytes", "metadata_n",
)  # fmt: skip
_PG_US = "(extract(epoch FROM {c}) * 1000000)::bigint"
# The sum of a column's µs since the epoch, exactly, without a numeric per row (extract() is numeric: 1.52 s
# for the check of a 1M-row partition; UTC days + time of day summed apart: 1.02 s; this: ~0.75 s):
# date_part() is float8 of (µs since 1970) / 10^6, correctly rounded; times 10^6 and rounded it is the
# exact µs while they fit float8's 53 bits (1684-2255; checked against extract() over 2M random instants:
# no difference). Instants outside 1700-2250 take extract()'s exact numeric (tests: year 900, 2099, ...).
# Summed as bigint (int128 inside).
_PG_US_SUM = (
    "sum(CASE WHEN {c} >= '1700-01-01 00:00+00' AND {c} < '2250-01-01 00:00+00' "
    "THEN round(date_part('epoch', {c}) * 1000000)::bigint ELSE (extract(epoch FROM {c}) * 1000000)::bigint END)"
)
_PG_CHECK = (
    "coalesce(sum(id), 0)::text",
    f"coalesce({_PG_US_SUM.format(c='started_at')}, 0)::text",
    f"coalesce({_PG_US_SUM.format(c='ended_at')}, 0)::text",
    "count(ended_at)::text",
    "coalesce(sum(duration_sec), 0)::text",
    "count(duration_sec)::text",
    "coalesce(sum(octet_length(transcript)), 0)::text",
    "count(transcript)::text",
    "coalesce(sum(octet_length(metadata::text)), 0)::text",
    "count(metadata)::text",
)
_DUCK_CHECK = (
    "coalesce(sum(id), 0)::VARCHAR",
    "coalesce(sum(epoch_us(started_at)), 0)::VARCHAR",
    "coalesce(sum(epoch_us(ended_at)), 0)::VARCHAR",
    "count(ended_at)::VARCHAR",
    "coalesce(sum(duration_sec), 0)::VARCHAR",
    "count(duration_sec)::VARCHAR",
    "coalesce(sum(strlen(transcript)), 0)::VARCHAR",
    "count(transcript)::VARCHAR",
    "coalesce(sum(strlen(metadata::VARCHAR)), 0)::VARCHAR",
    "count(metadata)::VARCHAR",
)
# tenant, rows, the check sums, min/max started_at µs
PG_CHECK = (
    f"SELECT tenant_id::text, count(*), {', '.join(_PG_CHECK)}, {_PG_US.format(c='min(started_at)')}, "
    f"{_PG_US.format(c='max(started_at)')} FROM {{}} {{}} GROUP BY tenant_id ORDER BY tenant_id"
)
_DUCK_HASH = (
    "coalesce(sum(hash(id, tenant_id::VARCHAR, call_id::VARCHAR, started_at, ended_at, duration_sec, transcript, "
    "metadata::VARCHAR)::HUGEINT), 0)::VARCHAR"
)
# DuckDB over any source with the table's columns and a grouping column ``grp``:
# grp, rows, digest, the check sums, min/max started_at µs.
DUCK_SUMS_HASH_BY = (
    f"SELECT grp, count(*), {_DUCK_HASH}, {', '.join(_DUCK_CHECK)}, min(epoch_us(started_at)), "
    "max(epoch_us(started_at)) FROM {source} GROUP BY grp"
)


@dataclass(frozen=True)
class Fingerprint:
    """A tenant's rows in one period, summed so that any engine can recompute it (see the module doc)."""

    rows: int
    digest: str
    min_us: int | None
    max_us: int | None
    algo: str = MD5
    check: dict[str, str] | None = None  # sums+hash only

    def to_dict(self) -> dict[str, object]:
        """JSON-ready (the manifest's per-tenant entry)."""
        out: dict[str, object] = {"rows": self.rows, "digest": self.digest, "min_us": self.min_us,
                                  "max_us": self.max_us}  # fmt: skip
        if self.algo != MD5:  # schema-1 entries stay byte-for-byte what they were
            out["algo"] = self.algo
            check = self.check or {}  # in CHECK_NAMES order, whatever order it was read in (jsonb sorts keys)
            out["check"] = {k: check[k] for k in (*CHECK_NAMES, *sorted(set(check) - set(CHECK_NAMES))) if k in check}
        return out

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Fingerprint:
        """From :meth:`to_dict`'s form (either version)."""
        check = d.get("check")
        return cls(
            int(str(d["rows"])), str(d["digest"]), _opt_int(d.get("min_us")), _opt_int(d.get("max_us")),
            str(d.get("algo", MD5)), {str(k): str(v) for k, v in check.items()} if isinstance(check, dict) else None,
        )  # fmt: skip

    def postgres_part(self) -> tuple[object, ...]:
        """What Postgres can recompute over restored rows: ``md5`` all of it, ``sums+hash`` all but
        the DuckDB digest."""
        if self.algo == MD5:
            return (self.rows, self.digest, self.min_us, self.max_us)
        return (self.rows, tuple(sorted((self.check or {}).items())), self.min_us, self.max_us)

    @classmethod
    def from_check_row(cls, row: tuple[object, ...], digest: str = "") -> Fingerprint:
        """From a check row without its tenant: (rows, *CHECK_NAMES, min µs, max µs)."""
        n = len(CHECK_NAMES)
        sums = {name: str(v) for name, v in zip(CHECK_NAMES, row[1 : 1 + n], strict=True)}
        return cls(int(str(row[0])), digest, _opt_int(row[1 + n]), _opt_int(row[2 + n]), SUMS_HASH, sums)


def pg_fingerprints(
    conn: Any, table: sql.Identifier, where: sql.Composable | None = None, algo: str = MD5
) -> dict[str, Fingerprint]:
    """Per-tenant fingerprints Postgres computes over ``table`` for ``algo`` (for ``sums+hash``
    without the digest: compare with :meth:`Fingerprint.postgres_part`)."""
    if algo == MD5:
        rows = conn.execute(per_tenant_sql(PG_FINGERPRINT, table, where)).fetchall()
        return {str(t): Fingerprint(int(n), str(d), lo, hi) for t, n, d, lo, hi in rows}
    return {
        str(r[0]): Fingerprint.from_check_row(tuple(r[1:]))
        for r in conn.execute(per_tenant_sql(PG_CHECK, table, where))
    }


def _opt_int(v: object) -> int | None:
    return None if v is None else int(str(v))


def table_dir(schema: str, table: str) -> str:
    return table if schema == "public" else f"{schema}.{table}"


def period_value(start: datetime) -> str:
    return start.astimezone(UTC).date().isoformat()


def tenant_prefix(tdir: str, tenant: str) -> str:
    return f"{tdir}/tenant_id={uuid.UUID(tenant)}"


def period_prefix(tdir: str, tenant: str, interval: Interval, start: datetime) -> str:
    return f"{tenant_prefix(tdir, tenant)}/{PERIOD_KEY[interval]}={period_value(start)}"


def data_key(tdir: str, tenant: str, interval: Interval, start: datetime, part: int, fmt: str) -> str:
    ext = "parquet" if fmt == "parquet" else "csv"
    return f"{period_prefix(tdir, tenant, interval, start)}/part-{part:05d}.{ext}"


def manifest_key(tdir: str, interval: Interval, start: datetime) -> str:
    return f"{tdir}/_manifests/{PERIOD_KEY[interval]}={period_value(start)}.json"


def manifests_prefix(tdir: str) -> str:
    return f"{tdir}/_manifests"


@dataclass(frozen=True)
class ObjectEntry:
    key: str
    rows: int
    size: int
    sha256: str

    def to_dict(self) -> dict[str, object]:
        return {"key": self.key, "rows": self.rows, "size": self.size, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> ObjectEntry:
        return cls(str(d["key"]), int(str(d["rows"])), int(str(d["size"])), str(d["sha256"]))


@dataclass(frozen=True)
class TenantEntry:
    fingerprint: Fingerprint
    objects: tuple[ObjectEntry, ...]
    pruned_at: str | None = None

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {**self.fingerprint.to_dict(), "objects": [o.to_dict() for o in self.objects]}
        if self.pruned_at:
            out["pruned_at"] = self.pruned_at
        return out

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> TenantEntry:
        objs = d.get("objects") or []
        assert isinstance(objs, list)
        pruned = d.get("pruned_at")
        return cls(
            Fingerprint.from_dict(d), tuple(ObjectEntry.from_dict(o) for o in objs), str(pruned) if pruned else None
        )


@dataclass(frozen=True)
class Manifest:
    """What one archived partition holds: enough to verify, restore and prune it without the database."""

    table: str  # schema.table
    partition: str
    interval: Interval
    start: datetime
    end: datetime
    fmt: str
    tenants: dict[str, TenantEntry] = field(default_factory=dict)
    created_at: str = ""
    schema_version: int = SCHEMA_VERSION
    columns: dict[str, str] = field(default_factory=lambda: dict(ARCHIVE_COLUMNS))  # as the objects hold them

    @property
    def rows(self) -> int:
        return sum(t.fingerprint.rows for t in self.tenants.values())

    def to_json(self) -> bytes:
        doc = {
            "schema_version": self.schema_version,
            "table": self.table,
            "partition": self.partition,
            "interval": self.interval.value,
            "range": {"from": self.start.astimezone(UTC).isoformat(), "to": self.end.astimezone(UTC).isoformat()},
            "format": self.fmt,
            "compression": "zstd" if self.fmt == "parquet" else None,
            "columns": self.columns,
            "rows": self.rows,
            "created_at": self.created_at,
            "tenants": {t: e.to_dict() for t, e in sorted(self.tenants.items())},
        }
        return json.dumps(doc, indent=2, sort_keys=False).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        doc = json.loads(data)
        if int(doc.get("schema_version", 0)) > SCHEMA_VERSION:
            raise ValueError(
                f"manifest schema version {doc['schema_version']} is newer than this callvault "
                f"({SCHEMA_VERSION}): upgrade callvault"
            )
        return cls(
            table=doc["table"],
            partition=doc["partition"],
            interval=Interval.parse(doc["interval"]),
            start=datetime.fromisoformat(doc["range"]["from"]),
            end=datetime.fromisoformat(doc["range"]["to"]),
            fmt=doc["format"],
            tenants={t: TenantEntry.from_dict(e) for t, e in doc["tenants"].items()},
            created_at=doc.get("created_at", ""),
            schema_version=int(doc["schema_version"]),
            columns=dict(doc.get("columns") or ARCHIVE_COLUMNS),
        )

    @property
    def period(self) -> date:
        return self.start.astimezone(UTC).date()
