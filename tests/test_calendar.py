"""Planner vs real pg_partman, with the server's clock set to each instant (libfaketime).

For each interval the clock walks forward through a grid of instants; at each one ``plan --at T``
(computed before the clock moves) must list exactly what real maintenance then does with the
server's clock at T: ``callvault maintain`` (pg_partman's run_maintenance + gap filling) or the
pg_cron procedure ``callvault.run_maintenance`` called from a session in another time zone.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from tests.clock import FakeClock
from tests.helpers import run, run_json


def utc(*a: int) -> datetime:
    return datetime(*a, tzinfo=UTC)  # type: ignore[misc]


def every(start: datetime, end: datetime, step: timedelta) -> list[datetime]:
    out, t = [], start
    while t < end:
        out.append(t)
        t += step
    return out


# Three weeks around the 2026/27 year end (2026 has an ISO week 53), every 12 hours (00:00 and 12:00,
# pg_partman's rounding edge for daily), plus the edges of its rounding either side (Thursday 12:00 for
# weekly) and of the week. (Every 6 hours found nothing more and took twice the time.)
YEAR_END = sorted(
    {
        *every(utc(2026, 12, 21), utc(2027, 1, 11), timedelta(hours=12)),
        utc(2026, 12, 22, 11, 59), utc(2026, 12, 22, 12, 1),  # a weekday's noon, either side
        utc(2026, 12, 24, 11, 59), utc(2026, 12, 24, 12, 1),  # Thursday
        utc(2026, 12, 31, 11, 59), utc(2026, 12, 31, 12, 1),  # Thursday, last day of ISO-53 week's year
        utc(2027, 1, 3, 23, 59), utc(2027, 1, 3, 23, 50),  # Sunday, end of ISO week 53
        utc(2027, 1, 4, 0, 0, 30),  # Monday 00:00:30
    }
)  # fmt: skip
LEAP_DAY = [*every(utc(2028, 2, 25), utc(2028, 3, 3), timedelta(hours=12)), utc(2028, 2, 29, 11, 59),
            utc(2028, 2, 29, 12, 1)]  # fmt: skip
# DST: New York springs forward 2027-03-14, Berlin 2027-03-28; both fall back in autumn 2027.
DST_SPRING = every(utc(2027, 3, 12, 5), utc(2027, 3, 30), timedelta(hours=12))
DST_AUTUMN = every(utc(2027, 10, 29, 5), utc(2027, 11, 9), timedelta(hours=12))


def walk(dsn: str, clock: FakeClock, interval: str, instants: list[datetime], *, zone: str | None = None) -> int:
    """Init just before the first instant, then at each instant compare plan and maintenance.
    With ``zone``, the database's default time zone is ``zone`` and maintenance runs through the pg_cron
    procedure from a session in that zone. Returns how many partitions maintenance created."""
    clock.set(instants[0] - timedelta(hours=1))
    run("init", "--dsn", dsn, "--interval", interval)
    assert run_json("plan", "--dsn", dsn)["is_empty"], "init must leave nothing for maintenance"
    created = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        if zone:
            conn.execute(f"ALTER DATABASE {conn.info.dbname} SET timezone = '{zone}'")
        for t in sorted(instants):
            plan = run_json("plan", "--dsn", dsn, "--at", t.isoformat())
            clock.freeze(t)  # maintenance at exactly t: Thursday 12:00:00 is a rounding edge
            if zone:
                got = _cron_maintenance(dsn, zone)
            else:
                report = run_json("maintain", "--dsn", dsn)
                got = (sorted(report["created"]), sorted(report["detached"]))
            want = (sorted(p["name"] for p in plan["create"]), sorted(p["name"] for p in plan["retire"]))
            if zone:  # pg_cron's path is pg_partman alone: it does not fill gaps (none arise here)
                want = (sorted(p["name"] for p in plan["create"] if p["by"] == "pg_partman"), want[1])
            assert got == want, f"{interval} at {t.isoformat()}: plan {want}, maintenance did {got}"
            created += len(got[0])
            again = run_json("plan", "--dsn", dsn)
            assert again["create"] == [] and again["retire"] == [], f"{interval} at {t}: {again}"
            if not zone:
                assert run("health", "--dsn", dsn, ok=False).exit_code == 0, f"{interval} at {t}"
    return created


def _cron_maintenance(dsn: str, zone: str) -> tuple[list[str], list[str]]:
    """What pg_cron would run, from a session in ``zone``; the partitions it created and detached."""
    listing = """SELECT c.relname, c.relispartition FROM pg_class c
                 WHERE c.relname LIKE 'call\\_logs\\_p%' AND c.relkind = 'r'"""
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SHOW timezone").fetchone() == (zone,)
        before = dict(conn.execute(listing).fetchall())
        conn.execute("CALL callvault.run_maintenance('public.call_logs')")
        after = dict(conn.execute(listing).fetchall())
    created = sorted(n for n in after if after[n] and n not in before)
    detached = sorted(n for n in after if not after[n] and before.get(n))
    return created, detached


@pytest.mark.slow
@pytest.mark.parametrize("interval", ["daily", "weekly", "monthly"])
def test_plan_is_what_maintenance_does_around_the_iso53_year_end(
    clocked: tuple[object, FakeClock], clocked_dsn: str, interval: str
) -> None:
    created = walk(clocked_dsn, clocked[1], interval, YEAR_END)
    assert created >= {"daily": 20, "weekly": 3, "monthly": 0}[interval]
    clocked[1].set(utc(2027, 1, 11))


@pytest.mark.slow
@pytest.mark.parametrize("interval", ["daily", "weekly", "monthly"])
def test_plan_is_what_maintenance_does_over_the_2028_leap_day(
    clocked: tuple[object, FakeClock], clocked_dsn: str, interval: str
) -> None:
    walk(clocked_dsn, clocked[1], interval, LEAP_DAY)


@pytest.mark.slow
@pytest.mark.parametrize("zone", ["America/New_York", "Europe/Berlin"])
@pytest.mark.parametrize("instants", [DST_SPRING, DST_AUTUMN], ids=["spring", "autumn"])
@pytest.mark.parametrize("interval", ["daily", "weekly"])
def test_plan_is_what_pg_cron_does_across_dst_in_a_local_session(
    clocked: tuple[object, FakeClock], clocked_dsn: str, interval: str, instants: list[datetime], zone: str
) -> None:
    walk(clocked_dsn, clocked[1], interval, instants, zone=zone)


def test_the_clock_moves_the_server_and_callvault(clocked: tuple[object, FakeClock], clocked_dsn: str) -> None:
    clock = clocked[1]
    for when in (utc(2027, 1, 3, 23, 50), utc(2028, 2, 29, 12), utc(2026, 12, 3, 13)):
        clock.set(when)
        with psycopg.connect(clocked_dsn) as conn:
            now = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        assert abs(now - when) < timedelta(seconds=5)
    run("init", "--dsn", clocked_dsn)
    st = run_json("status", "--dsn", clocked_dsn)
    assert abs(datetime.fromisoformat(st["now"]) - utc(2026, 12, 3, 13)) < timedelta(seconds=30)
    current = [p for p in st["partitions"] if p["state"] == "current"]
    # named by its Monday, not its ISO week (pg_partman 4.7: YYYY_MM_DD, 5.x: YYYYMMDD)
    assert [p["name"] for p in current] in (["call_logs_p2026_11_30"], ["call_logs_p20261130"])
    # Thursday 13:00 is past the middle of the week: pg_partman keeps premake + 1 weeks ahead
    assert st["premake_horizon"].startswith("2027-01-11")
