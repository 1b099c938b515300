"""The archive tier of a tenant read (``Reader``/``AsyncReader`` with a store): which parts of a window
no attached partition covers, the manifests of the periods there, and only that tenant's objects read
with DuckDB into rows merged in the hot tier's order and cursor (:mod:`callvault.query` calls it)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from callvault import columns
from callvault.archive import layout
from callvault.archive.location import read_store
from callvault.archive.reader import _LONGEST_PERIOD, _PERIODS
from callvault.archive.store import Store
from callvault.config import Settings, from_env
from callvault.errors import ArchivePruned, ArchiveVerifyFailed, InvalidSetting, StoreUnavailable
from callvault.search import Match
from callvault.tenancy.ids import tenant_value, uuid_text
from callvault.window import aware_window

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# the columns a page or a lookup reads, and the DuckDB type each is normalised to (whatever the file holds)
_TYPES = {
    "id": "BIGINT", "started_at": "TIMESTAMP WITH TIME ZONE", "ended_at": "TIMESTAMP WITH TIME ZONE",
    "duration_sec": "INTEGER", "transcript": "VARCHAR", "metadata": "VARCHAR",
}  # fmt: skip

Range = tuple[datetime, datetime]
ArchivedSummary = tuple[Any, ...]  # (id, call_id, started_at, ended_at, duration_sec, *own columns asked)


@dataclass(frozen=True)
class ArchivePage:
    """One tenant's archived calls of a window, newest first, as :func:`tenant_page` returns them.

    ``calls``: ``(id, call_id, started_at, ended_at, duration_sec)`` tuples (``call_id`` a ``uuid.UUID``,
    times UTC) ordered by ``(started_at, id)`` descending, at most the ``limit`` asked for.
    ``periods``: first days of the archived periods that were read. ``pruned``: first days of the
    periods of the window whose objects for this tenant were deleted by archive retention
    (``callvault archive prune``): their calls are gone, not merely absent."""

    calls: list[ArchivedSummary]
    periods: tuple[date, ...] = ()
    pruned: tuple[date, ...] = ()


def uncovered(since: datetime, until: datetime, covered: Iterable[Range]) -> list[Range]:
    """The parts of ``[since, until)`` that none of the ``covered`` ranges holds, oldest first (pure).

    The Reader passes the hot table's attached partitions as ``covered``: what is left is what the
    archive serves (a period that is attached is read from Postgres only, even when it is archived
    too, e.g. restored)."""
    gaps: list[Range] = []
    cur = since
    for lo, hi in sorted(covered):
        if hi <= cur:
            continue
        if lo >= until:
            break
        if lo > cur:
            gaps.append((cur, lo))
        cur = hi
        if cur >= until:
            return gaps
    if cur < until:
        gaps.append((cur, until))
    return gaps


def tenant_page(
    tenant_id: str | uuid.UUID,
    since: datetime,
    until: datetime,
    *,
    settings: Settings | None = None,
    store_url: str | None = None,
    exclude: Iterable[Range] = (),
    before: tuple[datetime, int] | None = None,
    limit: int = 100,
) -> ArchivePage:
    """One tenant's archived calls with ``since <= started_at < until``, ordered like the hot query
    (``started_at`` then ``id``, newest first), at most ``limit``: the archive tier of
    :meth:`callvault.query.Reader.recent_calls`.

    Which periods are archived comes from the manifests (``<table>/_manifests/``); of those, only this
    tenant's objects (``tenant_id=<uuid>/``, as the manifest lists them) are read, with DuckDB, and
    every row is checked to be the tenant's again (the archive has no row-level security). Ids are read
    whether the files hold them as text or with the Parquet UUID type; Parquet and CSV periods alike.

    :param exclude: ranges served elsewhere (the hot table's attached partitions): no row in them is read.
    :param before: a keyset ``(started_at, id)``: only rows strictly older, as a cursor continues.
    :param limit: at most this many rows (1..10,000).
    :param settings: which table's archive (default :func:`callvault.config.from_env`).
    :param store_url: the archive store (default as for :func:`query`).
    :return: the rows, the periods read, and the periods pruned for this tenant (their calls are gone).
    :raises InvalidSetting: a naive or empty window, a tenant that is not a UUID, a bad limit, or no
        store configured (exit code 2).
    :raises StoreUnavailable: the store, a manifest or an object cannot be read (exit code 69).
    :raises ArchiveVerifyFailed: a manifest lists an object outside the tenant's prefix (exit code 65).

    Example:

        page = tenant_page(tenant, datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 4, 1, tzinfo=UTC),
                           settings=settings, store_url="s3://calls-archive/prod", limit=50)
        for row_id, call_id, started_at, ended_at, duration in page.calls: ...
    """
    lo, hi = _window(since, until)
    if not 1 <= limit <= 10_000:
        raise InvalidSetting(f"limit={limit} must be between 1 and 10000")
    settings = settings or from_env()
    ranges = uncovered(lo, hi, exclude)
    return _page(read_store(settings, store_url), settings, _tenant(tenant_id), ranges, before, limit)


def find_call(
    tenant_id: str | uuid.UUID,
    call_id: str | uuid.UUID,
    started_at: datetime,
    *,
    settings: Settings | None = None,
    store_url: str | None = None,
    exclude: Iterable[Range] = (),
) -> tuple[Any, ...] | None:
    """One archived call of one tenant by ``(tenant_id, call_id, started_at)``, or ``None``: the archive
    tier of :meth:`callvault.query.Reader.get_call`. Reads only the manifest and this tenant's objects
    of the one period holding ``started_at``.

    :param exclude: ranges served elsewhere (attached partitions): a ``started_at`` in one gives ``None``.
    :return: ``(id, tenant_id, call_id, started_at, ended_at, duration_sec, transcript, metadata)``, ids as
        ``uuid.UUID``, times UTC, metadata decoded from JSON.
    :raises ArchivePruned: the tenant's objects of that period were deleted by archive retention.
    :raises InvalidSetting: a naive ``started_at``, an id that is not a UUID, or no store configured.
    :raises StoreUnavailable: the store, the manifest or an object cannot be read (exit code 69).
    """
    if not isinstance(started_at, datetime) or started_at.tzinfo is None:
        raise InvalidSetting(f"started_at={started_at!r} must be a timezone-aware datetime")
    call = uuid_text(call_id, "call", "the call_id it was written with")
    settings = settings or from_env()
    at = started_at.astimezone(UTC)
    ranges = uncovered(at, at + timedelta(microseconds=1), exclude)
    return _find(read_store(settings, store_url), settings, _tenant(tenant_id), call, at, ranges)


def _window(since: datetime, until: datetime) -> Range:
    return aware_window(since, until)


def _tenant(tenant_id: str | uuid.UUID) -> str:
    return tenant_value(tenant_id)


def _manifests(store: Store, settings: Settings, ranges: list[Range]) -> list[layout.Manifest]:
    """The manifests of the archived periods overlapping ``ranges``, newest first: one listing of
    ``_manifests/`` (the period is in each key), then one read per period that may overlap."""
    if not ranges:
        return []
    lo, hi = ranges[0][0], ranges[-1][1]
    prefix = layout.manifests_prefix(layout.table_dir(settings.schema, settings.table))
    out = []
    for obj in store.iter_objects(prefix):
        name = obj.key.rsplit("/", 1)[-1]
        kind, _, value = name.removesuffix(".json").partition("=")
        if not name.endswith(".json") or kind not in _PERIODS:
            continue
        try:
            first = date.fromisoformat(value)
        except ValueError:
            continue  # not a manifest callvault wrote
        start = datetime(first.year, first.month, first.day, tzinfo=UTC)
        if start >= hi or start + _LONGEST_PERIOD <= lo:
            continue
        try:
            manifest = layout.Manifest.from_json(store.get_bytes(obj.key))
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreUnavailable(f"the manifest {store.url}/{obj.key} cannot be read: {exc}") from exc
        if any(manifest.start < r_hi and r_lo < manifest.end for r_lo, r_hi in ranges):
            out.append(manifest)
    return sorted(out, key=lambda m: m.start, reverse=True)


@dataclass(frozen=True)
class _Source:
    """One archived object of the tenant and the ranges of it to read."""

    period: date
    fmt: str
    key: str
    ranges: list[Range]


def _sources(
    store: Store, settings: Settings, tenant: str, ranges: list[Range]
) -> tuple[list[_Source], list[date], list[date]]:
    """(objects to read, periods read, periods pruned for the tenant) for ``ranges``."""
    prefix = layout.tenant_prefix(layout.table_dir(settings.schema, settings.table), tenant) + "/"
    sources, periods, pruned = [], [], []
    for m in _manifests(store, settings, ranges):
        entry = m.tenants.get(tenant)
        if entry is None:
            continue  # the tenant had no calls in that period
        if entry.pruned_at:
            pruned.append(m.period)
            continue
        clipped = [(max(lo, m.start), min(hi, m.end)) for lo, hi in ranges if lo < m.end and m.start < hi]
        for obj in entry.objects:
            if not obj.key.startswith(prefix):
                raise ArchiveVerifyFailed(
                    f"the manifest of {m.partition} lists {obj.key} for tenant {tenant}, outside {prefix}: refusing "
                    "to read it (the archive must keep tenants apart); check the store"
                )
            sources.append(_Source(m.period, m.fmt, obj.key, clipped))
        periods.append(m.period)
    return sources, periods, pruned


def _hex_id(col: str, duck_type: str) -> str:
    """DuckDB SQL giving the id in ``col`` as 32 lower-case hex digits, whether the file holds it as
    text (the exporter now), with the Parquet UUID type (older archives) or as its 16 raw bytes."""
    if duck_type == "UUID":
        return f"replace(CAST({col} AS VARCHAR), '-', '')"
    if duck_type == "BLOB":
        return f"lower(hex({col}))"
    return f"lower(replace(CAST({col} AS VARCHAR), '-', ''))"


def _object_dataset(store_fs: Any, root: str, src: _Source) -> Any:
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.dataset as ds

    path = f"{root}/{src.key}"
    if src.fmt == "parquet":
        return ds.dataset(path, format="parquet", filesystem=store_fs)
    text = {name: pa.string() for name in columns.NAMES}  # COPY CSV: NULL unquoted empty, '' quoted
    fmt = ds.CsvFileFormat(
        parse_options=pcsv.ParseOptions(newlines_in_values=True),
        convert_options=pcsv.ConvertOptions(column_types=text, strings_can_be_null=True,
                                             quoted_strings_can_be_null=False),
    )  # fmt: skip
    return ds.dataset(path, format=fmt, filesystem=store_fs)


@contextmanager
def _duck(store: Store, sources: list[_Source]) -> Iterator[tuple[Any, list[str]]]:
    """A DuckDB connection with each source registered, and per source a relation with normalised
    columns (``id``, ``started_at``..., ``tenant_hex``, ``call_hex``) that filters push down into."""
    import duckdb

    store_fs, root = store.arrow_filesystem()
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        rels = []
        for i, src in enumerate(sources):
            name = f"s{i}"
            try:
                con.register(name, _object_dataset(store_fs, root, src))
                types = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM {name}").fetchall()}
            except (duckdb.Error, OSError, ValueError) as exc:
                raise _unreadable(store, src, exc) from exc
            missing = [c for c in (*_TYPES, "tenant_id", "call_id") if c not in types]
            if missing:
                raise StoreUnavailable(
                    f"{store.url}/{src.key} has no column(s) {', '.join(missing)}: it is not an archive object "
                    "callvault wrote; check the store (`callvault archive list`)"
                )
            cols = [f"{c}" if types[c] == t else f"CAST({c} AS {t}) AS {c}" for c, t in _TYPES.items()]
            cols += [f"{_hex_id('tenant_id', types['tenant_id'])} AS tenant_hex",
                     f"{_hex_id('call_id', types['call_id'])} AS call_hex",
                     f"{_extras_json(types)} AS extra"]  # fmt: skip
            rels.append(f"(SELECT {', '.join(cols)} FROM {name})")
        yield con, rels


def _extras_json(types: dict[str, str]) -> str:
    """DuckDB SQL: the object's own columns (those not the seed's) as one JSON object (text). An object
    archived before a column was added simply lacks it (schema evolution: the key is absent)."""
    extras = [c for c in types if c not in columns.NAMES]
    if not extras:
        return "'{}'"
    pairs = ", ".join(f"'{c}', \"{c}\"" for c in extras if c.replace("_", "").isalnum())
    return f"CAST(json_object({pairs}) AS VARCHAR)"


def _unreadable(store: Store, src: _Source, exc: BaseException) -> StoreUnavailable:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return StoreUnavailable(
        f"cannot read {store.url}/{src.key} (the {src.period} period): {first}. Check the store is reachable "
        "and the object intact (`callvault archive list`; restore verifies objects against their manifest)"
    )


def _us(value: int | None) -> datetime | None:
    return None if value is None else _EPOCH + timedelta(microseconds=value)


def _json_text(value: object) -> str:
    """A value as DuckDB's ``json_extract_string`` gives it back from the archive's JSON of own columns."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _page(
    store: Store, settings: Settings, tenant: str, ranges: list[Range], before: tuple[datetime, int] | None,
    limit: int, where: Mapping[str, object] | None = None, extra: tuple[str, ...] = (), match: Match | None = None,
) -> ArchivePage:  # fmt: skip
    """The archive tier of a page: ``ranges`` already exclude what the hot table serves. ``where``: the
    table's own columns that must equal these values (an object archived before such a column existed has
    none: it never matches); ``extra``: own columns returned after the summary's five (NULL where absent);
    ``match``: a transcript search (:mod:`callvault.search`), its snippet returned last."""
    if before is not None:  # a keyset: nothing newer than the cursor's started_at can be on the page
        edge = before[0].astimezone(UTC) + timedelta(microseconds=1)
        ranges = [(lo, min(hi, edge)) for lo, hi in ranges if lo < edge]
    sources, periods, pruned = _sources(store, settings, tenant, ranges)
    if not sources:
        return ArchivePage([], tuple(periods), tuple(pruned))
    import duckdb

    parts: list[str] = []
    params: list[Any] = []
    snippet, snippet_params = match.duck_snippet() if match is not None else ("NULL", [])
    with _duck(store, sources) as (con, rels):
        for src, rel in zip(sources, rels, strict=True):
            spans = " OR ".join("(started_at >= ?::TIMESTAMPTZ AND started_at < ?::TIMESTAMPTZ)" for _ in src.ranges)
            clause = f"tenant_hex = ? AND ({spans})"
            params += [*snippet_params, tenant.replace("-", ""), *(t for span in src.ranges for t in span)]
            if match is not None:
                found, found_params = match.duck_predicate()
                clause += f" AND ({found})"
                params += found_params
            if before is not None:
                clause += " AND (started_at < ?::TIMESTAMPTZ OR (started_at = ?::TIMESTAMPTZ AND id < ?))"
                params += [before[0], before[0], before[1]]
            for name, value in (where or {}).items():  # names checked by the Reader (plain identifiers)
                clause += f" AND json_extract_string(extra, '$.\"{name}\"') = ?"
                params.append(_json_text(value))
            parts.append(
                f"SELECT {snippet} AS snippet, id, call_hex, epoch_us(started_at) AS us, "
                f"epoch_us(ended_at) AS ended_us, duration_sec, extra FROM {rel} WHERE {clause}"
            )
        statement = " UNION ALL ".join(parts) + " ORDER BY us DESC, id DESC LIMIT ?"
        try:
            rows = con.execute(statement, [*params, limit]).fetchall()
        except (duckdb.Error, OSError, ValueError) as exc:
            raise _unreadable(store, sources[0], exc) from exc
    calls: list[ArchivedSummary] = []
    for snip, i, c, us, end, d, own in rows:
        values = json.loads(own) if extra and own else {}
        calls.append((int(i), uuid.UUID(hex=c), _EPOCH + timedelta(microseconds=us), _us(end), d,
                      *(values.get(n) for n in extra), *((snip,) if match is not None else ())))  # fmt: skip
    return ArchivePage(calls, tuple(periods), tuple(pruned))


def _find(
    store: Store, settings: Settings, tenant: str, call: str, at: datetime, ranges: list[Range]
) -> tuple[Any, ...] | None:
    """The archive tier of a lookup: ``ranges`` is ``[at, at + 1 µs)`` unless the hot table serves it."""
    sources, _, pruned = _sources(store, settings, tenant, ranges)
    if pruned:
        raise ArchivePruned(
            f"tenant {tenant}'s archive of the period of {pruned[0]} was pruned (archive retention, `callvault "
            f"archive policy`): call {call} of {at.isoformat()}, if it was there, is gone"
        )
    if not sources:
        return None
    import duckdb

    with _duck(store, sources) as (con, rels):
        statement = " UNION ALL ".join(
            "SELECT id, tenant_hex, call_hex, epoch_us(started_at), epoch_us(ended_at), duration_sec, transcript, "
            f"metadata, extra FROM {rel} WHERE tenant_hex = ? AND call_hex = ? AND started_at = ?::TIMESTAMPTZ"
            for rel in rels
        )
        params = [v for _ in rels for v in (tenant.replace("-", ""), call.replace("-", ""), at)]
        try:
            row = con.execute(statement + " LIMIT 1", params).fetchone()
        except (duckdb.Error, OSError, ValueError) as exc:
            raise _unreadable(store, sources[0], exc) from exc
    if row is None:
        return None
    rid, t, c, us, end, duration, transcript, metadata, extra = row
    return (int(rid), uuid.UUID(hex=t), uuid.UUID(hex=c), _EPOCH + timedelta(microseconds=us), _us(end), duration,
            transcript, json.loads(metadata) if metadata is not None else None, extra)  # fmt: skip
