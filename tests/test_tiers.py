"""One read API across tiers: hot partitions from Postgres, archived weeks from the store, merged.

A table is filled in every partition that has begun (rows placed from the partitions' own bounds,
never from today's date), the clock is moved past retention with ``--at`` and the oldest weeks are
archived to a ``file://`` store in a temporary directory. Reads then go through ``Reader`` and
``AsyncReader`` (over a connection and over a pool) as the RLS-bound app role, and through ``callvault
calls``. Every expectation comes from a snapshot of the table taken as its owner before the archive.

The shared archive holds ids in all three forms a reader meets: objects written with the Parquet UUID
type (older exporters), objects whose ids are plain strings (the exporter now), and objects holding the
16 raw bytes without the UUID annotation.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from callvault import catalog
from callvault.archive.restore import list_archived
from callvault.config import Roles, Settings
from callvault.embedded import Cluster
from callvault.errors import ArchivePruned, StoreUnavailable
from callvault.query import AsyncReader, CallRecord, Page, Reader
from callvault.query_base import recent
from tests.conftest import _template_for
from tests.helpers import new_dir, run, run_json
from tests.pgbouncer import PgBouncer, pgbouncer_fixture  # noqa: F401  (the `pgbouncer` fixture)
from tests.test_archive import AT, TENANTS, fill
from tests.test_tenancy import PASSWORD, drop_roles, role_dsn
from tests.test_twins import READERS, Twin

MINUTE = timedelta(minutes=1)
_counter = itertools.count()


@dataclass
class Row:
    id: int
    tenant_id: UUID
    call_id: UUID
    started_at: datetime
    ended_at: datetime | None
    duration_sec: int | None
    transcript: str | None
    metadata: dict[str, Any] | None

    def record(self, tier: str) -> CallRecord:
        return CallRecord(self.id, self.tenant_id, self.call_id, self.started_at, self.ended_at, self.duration_sec,
                          self.transcript, self.metadata, tier)  # fmt: skip


@dataclass
class World:
    """A filled table whose oldest weeks are archived: the snapshot, the archived ranges, the window."""

    dsn: str
    settings: Settings
    roles: Roles
    store_dir: Path
    rows: list[Row]  # every row, as the owner saw it before the archive
    archived: list[tuple[datetime, datetime]]  # archived periods, oldest first (from their manifests)
    hot_start: datetime  # the oldest attached partition after the archive
    since: datetime = field(init=False)
    until: datetime = field(init=False)

    def __post_init__(self) -> None:
        # from the second-newest archived week (5 minutes in) to 7 minutes into the third hot week
        self.since = self.archived[-2][0] + 5 * MINUTE
        self.until = self.hot_start + timedelta(days=14) + 7 * MINUTE

    @property
    def store(self) -> str:
        return self.store_dir.as_uri()

    def app(self) -> str:
        return role_dsn(self.dsn, self.roles.app)

    def is_archived(self, ts: datetime) -> bool:
        return any(lo <= ts < hi for lo, hi in self.archived)

    def expected(self, tenant: str, since: datetime | None = None, until: datetime | None = None) -> list[Row]:
        lo, hi = since or self.since, until or self.until
        mine = [r for r in self.rows if str(r.tenant_id) == tenant and lo <= r.started_at < hi]
        return sorted(mine, key=lambda r: (r.started_at, r.id), reverse=True)


def build(dsn: str, store_dir: Path, *, fmt: str = "parquet", store: str | None = None,
          before_archive: Callable[[str], None] | None = None) -> World:  # fmt: skip
    prefix = f"cvtier{os.getpid()}_{next(_counter)}"
    roles = Roles.with_prefix(prefix)
    run("init", "--dsn", dsn, "--roles", "--role-prefix", prefix)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("SET timezone TO 'UTC'")
        for name in roles.as_dict().values():
            c.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(name), sql.Literal(PASSWORD)))
        fill(c, per_tenant_week=20)
        # ties on started_at for one tenant in every week: the keyset must break them by id in both tiers
        c.execute(
            """INSERT INTO call_logs (tenant_id, call_id, started_at, ended_at, duration_sec, transcript)
               SELECT tenant_id, gen_random_uuid(), started_at, ended_at, 7, 'tie'
               FROM call_logs, generate_series(1, 3) WHERE tenant_id = %s AND metadata->>'g' = '9'""",
            (TENANTS[0],),
        )
    if before_archive is not None:  # e.g. transcripts to search for, and the search indexes
        before_archive(dsn)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("SET timezone TO 'UTC'")
        rows = [Row(*r) for r in c.execute("SELECT * FROM call_logs").fetchall()]
    run("archive", "--dsn", dsn, "--to", store or store_dir.as_uri(), "--at", AT, "--format", fmt)
    settings = Settings(dsn=dsn).with_(roles=roles)
    manifests = list_archived(settings, store or store_dir.as_uri())
    with psycopg.connect(dsn) as c:
        starts = [p.info.start for p in catalog.list_partitions(c, settings) if p.info.start is not None]
    assert len(manifests) >= 2, "the test needs two archived weeks"
    return World(dsn, settings, roles, store_dir, rows, [(m.start, m.end) for m in manifests], min(starts))


def rewrite_ids(path: Path, form: str) -> None:
    """Rewrite an archived Parquet object with its ids in one form: ``uuid`` (the Parquet UUID type, as
    older exporters wrote), ``string`` (as the exporter writes now) or ``binary`` (16 bare bytes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path).read()
    for name in ("tenant_id", "call_id"):
        values = [UUID(bytes=v) if isinstance(v, bytes) else UUID(str(v)) for v in table.column(name).to_pylist()]
        if form == "string":
            col = pa.array([str(v) for v in values], pa.string())
        else:
            col = pa.array([v.bytes for v in values], pa.uuid() if form == "uuid" else pa.binary(16))
        table = table.set_column(table.schema.get_field_index(name), pa.field(name, col.type, False), col)
    pq.write_table(table, path, compression="zstd")


@pytest.fixture(scope="module", params=["4.7", "5.x"])
def world(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[World]:
    """One archived table shared by the read-only tests (per pg_partman major); its archive mixes the
    three id forms, whatever the exporter writes today."""
    template = _template_for(cluster, request.param)
    name = f"cv_tiers_{os.getpid()}_{request.param[0]}"  # a database of this module's own
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))
    dsn = cluster.dsn(name)
    w = build(dsn, new_dir(tmp_path_factory.mktemp("tiers") / "store"))
    for tenant, form in ((TENANTS[0], "uuid"), (TENANTS[1], "string"), (TENANTS[2], "binary")):
        files = sorted(w.store_dir.rglob(f"tenant_id={tenant}/*/*.parquet"))
        assert files
        for f in files:
            rewrite_ids(f, form)
    yield w
    drop_roles(dsn, w.roles)
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def fresh(dsn: str, tmp_path: Path) -> Iterator[World]:
    """An archived table of its own, for tests that restore or prune."""
    w = build(dsn, new_dir(tmp_path / "store"))
    yield w
    drop_roles(dsn, w.roles)


def open_reader(kind: str, twin: Twin, w: World, *, dsn: str | None = None, **kw: Any) -> tuple[Any, Any]:
    """(reader, source to close) of the given kind, as the app role (or through ``dsn``)."""
    dsn, conn_kw = dsn or w.app(), {"prepare_threshold": None}
    if kind == "sync-conn":
        src: Any = psycopg.connect(dsn, **conn_kw)
        return Reader(src, w.settings, **kw), src
    if kind == "sync-pool":
        src = ConnectionPool(dsn, min_size=1, max_size=2, kwargs=conn_kw, open=True)
        return Reader(src, w.settings, **kw), src
    if kind == "async-conn":
        src = twin(psycopg.AsyncConnection.connect(dsn, **conn_kw))
        return AsyncReader(src, w.settings, **kw), src
    src = AsyncConnectionPool(dsn, min_size=1, max_size=2, kwargs=conn_kw, open=False)
    twin(src.open())
    return AsyncReader(src, w.settings, **kw), src


@pytest.fixture(params=READERS)
def tiered(request: pytest.FixtureRequest, world: World) -> Iterator[tuple[Twin, Any, World]]:
    twin = Twin(request.param)
    reader, src = open_reader(request.param, twin, world, store_url=world.store)
    yield twin, reader, world
    twin(src.close())
    twin.close()


def pages(twin: Twin, reader: Any, tenant: str, since: datetime, until: datetime, limit: int) -> list[Page]:
    out, cursor = [], None
    while True:
        page = twin(reader.recent_calls(tenant, since=since, until=until, limit=limit, cursor=cursor))
        out.append(page)
        if page.next_cursor is None:
            return out
        cursor = page.next_cursor


def test_a_window_across_archived_and_hot_weeks_reads_each_row_once_in_order(
    tiered: tuple[Twin, Any, World],
) -> None:
    twin, reader, w = tiered
    spanning = 0
    for tenant in TENANTS:
        want = w.expected(tenant)
        assert any(w.is_archived(r.started_at) for r in want) and any(not w.is_archived(r.started_at) for r in want)
        got = pages(twin, reader, tenant, w.since, w.until, limit=7)
        calls = [c for p in got for c in p]
        assert [(c.id, c.call_id, c.started_at) for c in calls] == [(r.id, r.call_id, r.started_at) for r in want]
        assert [c.tier for c in calls] == ["archive" if w.is_archived(r.started_at) else "hot" for r in want]
        assert all(len(p) == 7 for p in got[:-1]) and all(p.pruned == () for p in got)
        for p in got:
            assert p.tiers == tuple(dict.fromkeys(c.tier for c in p))
        spanning += sum(1 for p in got if p.tiers == ("hot", "archive"))
        assert [c.duration_sec for c in calls] == [r.duration_sec for r in want]
        assert [c.ended_at for c in calls] == [r.ended_at for r in want]
    assert spanning >= 1, "some page holds rows of both tiers"


def test_one_big_page_equals_the_paged_rows(tiered: tuple[Twin, Any, World]) -> None:
    twin, reader, w = tiered
    tenant = TENANTS[4]
    want = w.expected(tenant)
    page = twin(reader.recent_calls(tenant, since=w.since, until=w.until, limit=10_000))
    assert [c.id for c in page] == [r.id for r in want] and page.next_cursor is None
    assert page.tiers == ("hot", "archive")
    assert {c.call_id for c in page}.isdisjoint({r.call_id for r in w.rows if str(r.tenant_id) != tenant})


def test_get_call_finds_an_archived_call_given_started_at(tiered: tuple[Twin, Any, World]) -> None:
    twin, reader, w = tiered
    for tenant in TENANTS[:3]:  # UUID-typed, string and binary ids in the archive
        archived = [r for r in w.expected(tenant) if w.is_archived(r.started_at)]
        for row in (archived[0], archived[-1], next(r for r in archived if r.transcript in ("", None))):
            got = twin(reader.get_call(tenant, row.call_id, row.started_at))
            assert got == row.record("archive")
            assert twin(reader.get_call(tenant, row.call_id)) is None, "without started_at: hot only"
            other = next(t for t in TENANTS if t != tenant)
            assert twin(reader.get_call(other, row.call_id, row.started_at)) is None, "another tenant's call"
            assert twin(reader.get_call(tenant, row.call_id, row.started_at + MINUTE / 60)) is None
    hot = next(r for r in w.expected(TENANTS[3]) if not w.is_archived(r.started_at))
    assert twin(reader.get_call(TENANTS[3], hot.call_id, hot.started_at)) == hot.record("hot")


@pytest.mark.parametrize("kind", ["sync-conn", "async-pool"])
def test_a_pipelined_reader_reads_across_tiers_alike(world: World, kind: str) -> None:
    twin = Twin(kind)
    reader, src = open_reader(kind, twin, world, store_url=world.store, pipeline=True)
    calls = [c for p in pages(twin, reader, TENANTS[3], world.since, world.until, limit=9) for c in p]
    assert [c.id for c in calls] == [r.id for r in world.expected(TENANTS[3])]
    row = next(r for r in world.expected(TENANTS[3]) if world.is_archived(r.started_at))
    assert twin(reader.get_call(TENANTS[3], row.call_id, row.started_at)) == row.record("archive")
    twin(src.close())
    twin.close()


def test_tiered_reads_through_pgbouncer_take_turns_on_one_server_connection(world: World, pgbouncer: PgBouncer) -> None:
    """Three clients (Reader, Reader in pipeline mode, AsyncReader on a pool) page every tenant across
    the tiers at once through PgBouncer in transaction mode: the pipelined catalog statement and the
    bounds read never collide, every page is right."""
    url = pgbouncer.route(world.app())
    errors: list[BaseException] = []

    def client(kind: str, pipeline: bool) -> None:
        twin = Twin(kind)
        try:
            reader, src = open_reader(kind, twin, world, store_url=world.store, pipeline=pipeline, dsn=url)
            for tenant in TENANTS * 2:
                calls = [c for p in pages(twin, reader, tenant, world.since, world.until, limit=17) for c in p]
                assert [c.id for c in calls] == [r.id for r in world.expected(tenant)], (kind, tenant)
            twin(src.close())
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            twin.close()

    threads = [threading.Thread(target=client, args=a) for a in (("sync-conn", False), ("sync-conn", True),
                                                                  ("async-pool", False))]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert errors == [] and not any(t.is_alive() for t in threads)
    # pool_size=1: at most one server connection ever served these clients (PgBouncer may have closed it
    # by now when a client left mid-transaction, so "exactly one" would be a race, seen once in CI).
    servers = [x for x in pgbouncer.show("SERVERS") if x["user"] == world.roles.app]
    assert len(servers) <= 1
    pools = [x for x in pgbouncer.show("POOLS") if x["user"] == world.roles.app]
    assert pools and all(
        p["sv_active"] + p["sv_idle"] + p["sv_used"] + p["sv_tested"] + p["sv_login"] <= 1 for p in pools
    )
    db = urlsplit(url).path.lstrip("/")
    stats = [x for x in pgbouncer.show("STATS") if x["database"] == db]
    assert stats and stats[0]["total_xact_count"] >= 3 * len(TENANTS) * 2, "every page went through the pooler"


def test_uncovered_is_the_window_minus_the_attached_ranges() -> None:
    from callvault.archive.tier import uncovered

    d = [datetime(2026, 3, day, tzinfo=UTC) for day in range(1, 31)]
    weeks = [(d[1], d[8]), (d[8], d[15]), (d[22], d[29])]  # a gap: d[15]..d[22]
    assert uncovered(d[0], d[29], weeks) == [(d[0], d[1]), (d[15], d[22])]
    assert uncovered(d[2], d[14], weeks) == []
    assert uncovered(d[10], d[25], list(reversed(weeks))) == [(d[15], d[22])]
    assert uncovered(d[16], d[20], weeks) == [(d[16], d[20])]
    assert uncovered(d[0], d[5], []) == [(d[0], d[5])]


def test_the_async_twin_reads_the_archive_off_the_event_loop(world: World) -> None:
    twin = Twin("async-conn")
    reader, src = open_reader("async-conn", twin, world, store_url=world.store)
    opened = reader._archive_store
    threads: list[bool] = []

    def spy() -> Any:
        threads.append(threading.current_thread() is threading.main_thread())
        return opened()

    reader._archive_store = spy
    twin(reader.recent_calls(TENANTS[0], since=world.since, until=world.until, limit=10_000))
    twin(src.close())
    twin.close()
    assert threads == [False], "the archive tier ran on a worker thread"


def test_a_window_the_hot_table_covers_never_touches_the_store(world: World, tmp_path: Path) -> None:
    missing = (tmp_path / "no-such-store").as_uri()  # named explicitly: reading it would raise
    with psycopg.connect(world.app()) as conn:
        r = Reader(conn, world.settings, store_url=missing)
        since, until = world.hot_start, world.hot_start + timedelta(days=21)
        page = r.recent_calls(TENANTS[2], since=since, until=until, limit=10_000)
        assert [c.id for c in page] == [x.id for x in world.expected(TENANTS[2], since, until)]
        assert page.tiers == ("hot",)
        # a window across the boundary whose first page the hot rows fill: the store is not read either
        first = r.recent_calls(TENANTS[4], since=world.since, until=world.until, limit=5)
        assert first.tiers == ("hot",) and first.next_cursor
        with pytest.raises(StoreUnavailable, match="does not exist"):
            r.recent_calls(TENANTS[4], since=world.since, until=world.until, limit=10_000)


def test_without_a_store_reads_stay_hot_only(world: World) -> None:
    with psycopg.connect(world.app()) as conn:
        r = Reader(conn, world.settings)  # Settings without archive_url, no store_url
        assert r.store_url is None
        plan = recent(r, TENANTS[0], world.since, world.until, 100, None)
        assert plan.tiers is None, "the same single statement as before tiers existed"
        page = r.recent_calls(TENANTS[0], since=world.since, until=world.until, limit=10_000)
        hot = [x.id for x in world.expected(TENANTS[0]) if not world.is_archived(x.started_at)]
        assert [c.id for c in page] == hot and page.tiers == ("hot",)
        row = next(x for x in world.expected(TENANTS[0]) if world.is_archived(x.started_at))
        assert r.get_call(TENANTS[0], row.call_id, row.started_at) is None


def test_the_settings_archive_url_is_the_default_store(world: World) -> None:
    with psycopg.connect(world.app()) as conn:
        r = Reader(conn, world.settings.with_(archive_url=world.store))
        page = r.recent_calls(TENANTS[1], since=world.since, until=world.until, limit=10_000)
        assert [c.id for c in page] == [x.id for x in world.expected(TENANTS[1])]


def test_a_restored_week_is_read_once_from_the_hot_table(fresh: World) -> None:
    w = fresh
    week = w.archived[-1][0]
    restored = run_json("restore", "--dsn", w.dsn, "--to", w.store, "--week", week.date().isoformat())
    assert restored["attached_partition"]
    assert list_archived(w.settings, w.store)[-1].start == week, "the week is still in the archive too"
    twin = Twin("sync-pool")
    reader, src = open_reader("sync-pool", twin, w, store_url=w.store)
    for tenant in TENANTS:
        calls = [c for p in pages(twin, reader, tenant, w.since, w.until, limit=11) for c in p]
        want = w.expected(tenant)
        assert [c.id for c in calls] == [r.id for r in want], "each row once"
        assert [c.tier for c in calls] == [
            "archive" if w.is_archived(r.started_at) and r.started_at < week else "hot" for r in want
        ]
    row = next(r for r in w.expected(TENANTS[3]) if week <= r.started_at < w.archived[-1][1])
    assert reader.get_call(TENANTS[3], row.call_id, row.started_at) == row.record("hot")
    src.close()


def test_pruned_weeks_are_reported_not_silently_empty(fresh: World) -> None:
    w = fresh
    gone = TENANTS[0]
    run("archive", "policy", "--dsn", w.dsn, "--tenant-id", gone, "--keep", "1 day")
    pruned = run_json("archive", "prune", "--dsn", w.dsn, "--to", w.store, "--at", AT)
    assert {d["tenant"] for d in pruned["deleted"]} == {gone}
    with psycopg.connect(w.app()) as conn:
        r = Reader(conn, w.settings, store_url=w.store)
        page = r.recent_calls(gone, since=w.since, until=w.until, limit=10_000)
        assert [c.id for c in page] == [x.id for x in w.expected(gone) if not w.is_archived(x.started_at)]
        assert page.pruned == tuple(sorted((lo.date() for lo, hi in w.archived if lo < w.until and w.since < hi),
                                           reverse=True))  # fmt: skip
        kept = r.recent_calls(TENANTS[1], since=w.since, until=w.until, limit=10_000)
        assert kept.pruned == () and "archive" in kept.tiers
        row = next(x for x in w.expected(gone) if w.is_archived(x.started_at))
        with pytest.raises(ArchivePruned, match="pruned"):
            r.get_call(gone, row.call_id, row.started_at)


def test_a_csv_archive_reads_like_parquet(dsn: str, tmp_path: Path) -> None:
    w = build(dsn, new_dir(tmp_path / "store"), fmt="csv")
    try:
        assert list(w.store_dir.rglob("*.csv")) and not list(w.store_dir.rglob("*.parquet"))
        with psycopg.connect(w.app()) as conn:
            r = Reader(conn, w.settings, store_url=w.store)
            for tenant in TENANTS[:2]:
                calls = [c for p in pages(Twin("sync"), r, tenant, w.since, w.until, limit=50) for c in p]
                want = w.expected(tenant)
                assert [(c.id, c.call_id, c.started_at, c.ended_at, c.duration_sec) for c in calls] == [
                    (x.id, x.call_id, x.started_at, x.ended_at, x.duration_sec) for x in want
                ]
            for row in [x for x in w.expected(TENANTS[2]) if w.is_archived(x.started_at)][:15]:  # '' and NULL too
                assert r.get_call(TENANTS[2], row.call_id, row.started_at) == row.record("archive")
    finally:
        drop_roles(dsn, w.roles)


def test_an_s3_archive_is_read_through_the_same_api(dsn: str, tmp_path: Path, bucket: str) -> None:
    w = build(dsn, tmp_path / "unused", store=bucket)
    try:
        twin = Twin("async-pool")
        reader, src = open_reader("async-pool", twin, w, store_url=bucket)
        calls = [c for p in pages(twin, reader, TENANTS[3], w.since, w.until, limit=40) for c in p]
        assert [c.id for c in calls] == [x.id for x in w.expected(TENANTS[3])]
        row = next(x for x in w.expected(TENANTS[3]) if w.is_archived(x.started_at))
        assert twin(reader.get_call(TENANTS[3], row.call_id, row.started_at)) == row.record("archive")
        twin(src.close())
        twin.close()
    finally:
        drop_roles(dsn, w.roles)


# ---------------------------------------------------------------- the CLI


def test_cli_calls_json_across_tiers_with_the_cursor(world: World) -> None:
    w, tenant = world, TENANTS[1]
    args = ["calls", "--dsn", w.app(), "--tenant-id", tenant, "--since", w.since.isoformat(),
            "--until", w.until.isoformat(), "--store-url", w.store, "--limit", "30"]  # fmt: skip
    seen, tiers, cursor = [], [], None
    while True:
        doc = run_json(*args, *(["--cursor", cursor] if cursor else []))
        assert set(doc) == {"calls", "next_cursor", "tiers", "pruned"}
        seen += [(c["id"], c["call_id"], c["started_at"], c["tier"]) for c in doc["calls"]]
        tiers += doc["tiers"]
        cursor = doc["next_cursor"]
        if cursor is None:
            break
    want = w.expected(tenant)
    assert seen == [
        (r.id, str(r.call_id), r.started_at.isoformat(), "archive" if w.is_archived(r.started_at) else "hot")
        for r in want
    ]
    assert "hot" in tiers and "archive" in tiers
    first = run(*args).stdout  # the text form: a table, then the cursor of the next page
    assert " hot " in first and "more: --cursor" in first
    whole = run(*args[:-2], "--limit", "1000").stdout
    assert " archive " in whole and " hot " in whole and "more:" not in whole


def test_cli_calls_names_bad_input_in_one_line(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CALLVAULT_ARCHIVE_URL", raising=False)
    w = world
    base = ["calls", "--dsn", w.dsn, "--since", w.since.isoformat(), "--until", w.until.isoformat()]
    cases = [
        ([*base, "--tenant-id", "not-a-uuid", "--store-url", w.store], 2, ["--tenant-id", "not-a-uuid", "UUID"]),
        (["calls", "--dsn", w.dsn, "--tenant-id", TENANTS[0], "--since", w.until.isoformat(), "--until",
          w.since.isoformat(), "--store-url", w.store], 2, ["--until", "not after --since", "later --until"]),
        ([*base, "--tenant-id", TENANTS[0], "--store-url", (tmp_path / "nowhere").as_uri()], 69,
         ["nowhere", "does not exist", "--to"]),
        ([*base, "--tenant-id", TENANTS[0], "--since", "last tuesday"], 2, ["--since", "ISO 8601"]),
    ]  # fmt: skip
    for args, code, needles in cases:
        result = run(*args, ok=False)
        assert result.exit_code == code, (args, result.output, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.stderr, lines
        for needle in needles:
            assert needle in lines[0], (needle, lines[0])
    # no store named: the one the archive journal recorded serves the archived weeks (issue 24)
    recorded = run_json(*base, "--tenant-id", TENANTS[0])
    assert "archive" in recorded["tiers"]
    # a window the hot table covers needs no store at all
    hot = run_json("calls", "--dsn", w.dsn, "--tenant-id", TENANTS[0], "--since", w.hot_start.isoformat(),
                   "--until", (w.hot_start + timedelta(days=7)).isoformat())  # fmt: skip
    assert hot["tiers"] == ["hot"]


def test_the_store_objects_really_mix_the_id_forms(world: World) -> None:
    import pyarrow.parquet as pq

    def kind(tenant: str) -> str:
        f = next(world.store_dir.rglob(f"tenant_id={tenant}/*/*.parquet"))
        return str(pq.read_schema(f).field("call_id").type)

    assert kind(TENANTS[0]) == "extension<arrow.uuid>"
    assert kind(TENANTS[1]) == "string"
    assert kind(TENANTS[2]) == "fixed_size_binary[16]"
    assert json.loads((next(world.store_dir.rglob("_manifests/*.json"))).read_text())["tenants"]
