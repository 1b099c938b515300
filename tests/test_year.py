"""A year in the life: the server's clock walks 62 weeks across a year end while calls are written,
and the worker's cycle (archive to a file:// store, then maintain) runs after every step.

After every step: no call refused for lack of a partition, the premake horizon at least premake
weeks ahead, nothing hot older than retention + one week, every call written either hot or in a
verified archive (per tenant and week), and ``health`` healthy.
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from callvault import Writer
from callvault.archive.pipeline import archive
from callvault.archive.restore import list_archived
from callvault.config import Settings
from callvault.maintain import maintain
from callvault.plan import Interval
from tests.clock import FakeClock
from tests.helpers import run, run_json

START = datetime(2026, 10, 5, 9, tzinfo=UTC)  # a Monday; the walk crosses 2026 (ISO week 53) into 2027
WEEKS = 62
STEPS_H = (53, 115)  # two steps a week (Wednesday 14:00, Monday 09:00), at different hours of different days
CALLS_PER_STEP = 60
TENANTS = [uuid.UUID(int=i, version=4) for i in range(1, 4)]


def _week(ts: datetime) -> datetime:
    return Interval.WEEKLY.floor(ts)


@pytest.mark.slow
def test_a_year_in_the_life(clocked: tuple[object, FakeClock], clocked_dsn: str, tmp_path: Path) -> None:
    clock, dsn = clocked[1], clocked_dsn
    settings = Settings(dsn=dsn)
    (tmp_path / "archive").mkdir(mode=0o700)  # the store exists before the first archive (as a bucket would)
    store = (tmp_path / "archive").as_uri()
    clock.set(START)
    run("init", "--dsn", dsn)
    written: Counter[tuple[str, datetime]] = Counter()
    now, prev, step = START, START - timedelta(hours=20), 0
    figures = Counter[str]()
    # A Writer per step: a Writer re-reads the partition range every 30 s of *real* time (weeks ahead
    # of the premake horizon in real life); here days pass in milliseconds between steps.
    while now < START + timedelta(weeks=WEEKS):
        with Writer(dsn) as writer:
            clock.set(now)
            calls = []
            for i in range(CALLS_PER_STEP):  # calls that started since the last step, some just now
                started = prev + (now - prev) * (i + 1) / (CALLS_PER_STEP + 1)
                t = TENANTS[i % len(TENANTS)]
                ended = started + timedelta(seconds=90)
                calls.append({"tenant_id": t, "call_id": uuid.uuid4(), "started_at": started, "ended_at": ended})
                written[(str(t), _week(started))] += 1
            writer.write_many(calls)
            result = writer.flush()
            assert result.quarantined == 0 and result.written == CALLS_PER_STEP, f"{now}: {result}"
            arch = archive(settings, store_url=store)  # the worker's order: archive, then maintain
            assert not arch.failed, f"{now}: {arch.to_dict()}"
            report = maintain(settings)
            figures.update(created=len(report.created), archived=len(arch.partitions))
            _check(dsn, now, store, settings, written)
            prev, now, step = now, now + timedelta(hours=STEPS_H[step % len(STEPS_H)]), step + 1
    figures.update(steps=step, calls=sum(written.values()))
    print(f"year in the life: {dict(figures)}")
    # the usage rollup still counts every call of the year, most of whose weeks are archived and dropped
    with psycopg.connect(dsn) as conn:
        rolled = conn.execute(
            "SELECT tenant_id::text, date_bin('7 days', hour, '2026-10-05 00:00+00'), sum(calls)::int "
            "FROM callvault.usage WHERE parent_table = 'public.call_logs' GROUP BY 1, 2"
        ).fetchall()
    assert {(t, w): n for t, w, n in rolled} == dict(written), "usage = every call written, per tenant and week"
    assert figures["archived"] >= WEEKS - 14 and figures["created"] >= WEEKS - 1


def _check(dsn: str, now: datetime, store: str, settings: Settings, written: Counter[tuple[str, datetime]]) -> None:
    st = run_json("status", "--dsn", dsn)
    assert st["healthy"], f"{now}: {st['problems']}"
    horizon = datetime.fromisoformat(st["premake_horizon"])
    assert horizon >= Interval.WEEKLY.add(_week(now), 5), f"{now}: horizon {horizon}"
    oldest = datetime.fromisoformat(st["oldest_partition_start"])
    assert oldest >= now - timedelta(days=90 + 7), f"{now}: hot partition from {oldest}"
    hot: Counter[tuple[str, datetime]] = Counter()
    with psycopg.connect(dsn) as conn:
        for tenant, week, n in conn.execute(
            "SELECT tenant_id::text, date_trunc('week', started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', count(*) "
            "FROM call_logs GROUP BY 1, 2"
        ).fetchall():
            hot[(tenant, week.astimezone(UTC))] += n
    cold: Counter[tuple[str, datetime]] = Counter()
    for manifest in list_archived(settings, store):
        for tenant, entry in manifest.tenants.items():
            cold[(tenant, manifest.start)] += entry.fingerprint.rows
    assert not (set(hot) & set(cold)), f"{now}: weeks both hot and archived"
    assert hot + cold == written, f"{now}: written {sum(written.values())}, hot+archived {sum((hot + cold).values())}"
