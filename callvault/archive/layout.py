"""Archive layout, manifest and the content fingerprint. Pure: nothing here does I/O.

Layout (Hive-style, so per-tenant retention and erasure are prefix operations)::

    <root>/<table>/tenant_id=<uuid>/<period>=<YYYY-MM-DD>/part-00000.parquet
    <root>/<table>/_manifests/<period>=<YYYY-MM-DD>.json

``<period>`` is ``week``, ``day`` or ``month`` after the table's partition interval, the date is the
partition's first day (UTC). ``<table>`` is the table name, or ``<schema>.<table>`` outside ``public``.
Names starting with ``_`` are skipped by Hive readers (Spark, DuckDB, pyarrow), so manifests never show
up as data.

The *fingerprint* of a tenant's rows is computed twice by different engines and must agree before
anything is dropped: by Postgres over the detached table, and by DuckDB over the Parquet/CSV read back
from the store. Per row: md5 of ``id|call_id|started_at µs|ended_at µs|duration|md5(transcript)|
md5(metadata text)`` (``~`` for NULL); the first 60 bits of each row digest are summed (exact in both
engines: numeric / hugeint), so row order does not matter and a duplicated or missing row changes it.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from psycopg import sql

from callvault import columns
from callvault.plan import Interval

SCHEMA_VERSION = 1
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
DUCK_FINGERPRINT = (
    f"SELECT count(*), coalesce(sum(('0x' || substr(md5({_DUCK_ROW}), 1, 15))::BIGINT), 0)::VARCHAR, "
    "min(epoch_us(started_at)), max(epoch_us(started_at)) FROM {source}"
)
# The same per file group: ``grp`` is a column the source provides (the file each row came from).
DUCK_FINGERPRINT_BY = (
    f"SELECT grp, count(*), coalesce(sum(('0x' || substr(md5({_DUCK_ROW}), 1, 15))::BIGINT), 0)::VARCHAR, "
    "min(epoch_us(started_at)), max(epoch_us(started_at)) FROM {source} GROUP BY grp"
)


def pg_fingerprint_sql(table: sql.Identifier, where: sql.Composable | None = None) -> sql.Composed:
    return sql.SQL(PG_FINGERPRINT).format(table, where if where is not None else sql.SQL(""))


@dataclass(frozen=True)
class Fingerprint:
    rows: int
    digest: str
    min_us: int | None
    max_us: int | None

    def to_dict(self) -> dict[str, object]:
        return {"rows": self.rows, "digest": self.digest, "min_us": self.min_us, "max_us": self.max_us}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Fingerprint:
        return cls(int(str(d["rows"])), str(d["digest"]), _opt_int(d.get("min_us")), _opt_int(d.get("max_us")))


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
            "columns": ARCHIVE_COLUMNS,
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
        )

    @property
    def period(self) -> date:
        return self.start.astimezone(UTC).date()
