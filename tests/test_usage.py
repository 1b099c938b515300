"""Usage rollups (``callvault usage``, ``Reader.usage``, :mod:`callvault.usage`): exactly once while the
Writer ingests — re-sent calls, late calls, an idempotent re-send after a failed batch — kept after a week
is archived and dropped, adjusted by erasure in every tier, recounted from hot + archive and checked.

Calls are placed from the partitions' own bounds (every partition that has begun); the clock is moved
past retention with ``--at`` for the archive. Every expectation is computed in Python from the calls
written (each call id once)."""

from __future__ import annotations

import random
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from callvault import catalog
from callvault.config import Roles, Settings
from callvault.ingest import Writer
from callvault.query import Reader
from tests.helpers import new_dir, run, run_json
from tests.test_archive import AT
from tests.test_tenancy import PASSWORD, drop_roles, role_dsn

TENANTS = [str(uuid.UUID(int=0xC0FFEE00 + i)) for i in range(3)]
AGENTS = ["ava", "bo", "cy"]


def _calls(conn: psycopg.Connection, settings: Settings, seed: int) -> list[dict[str, Any]]:
    """Calls in every partition that has begun, up to the server's now (never today's date)."""
    rnd = random.Random(seed)
    now = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    out = []
    for p in catalog.list_partitions(conn, settings):
        lo, hi = p.info.start, p.info.end
        if lo is None or hi is None or lo >= now:
            continue
        for _ in range(60):
            at = lo + timedelta(seconds=rnd.randrange(int((min(hi, now) - lo).total_seconds())))
            duration = rnd.choice([None, *range(1, 900)])
            meta = {"agent": rnd.choice(AGENTS)} if rnd.random() < 0.8 else {"other": 1}
            out.append({"tenant_id": rnd.choice(TENANTS), "call_id": uuid.UUID(int=rnd.getrandbits(128), version=4),
                        "started_at": at, "ended_at": at + timedelta(seconds=duration or 0), "duration_sec": duration,
                        "transcript": "hello", "metadata": meta})  # fmt: skip
    return out


def _by_day(calls: list[dict[str, Any]], tenant: str) -> dict[str, tuple[int, int]]:
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for c in calls:
        if c["tenant_id"] == tenant:
            day = c["started_at"].astimezone(UTC).strftime("%Y-%m-%d")
            out[day][0] += 1
            out[day][1] += c["duration_sec"] or 0
    return {k: (v[0], v[1]) for k, v in out.items()}


def _usage(dsn: str, tenant: str, since: datetime, until: datetime, by: str = "day") -> dict[str, tuple[int, int]]:
    doc = run_json("usage", "--dsn", dsn, "--tenant-id", tenant, "--since", since.isoformat(), "--until",
                   until.isoformat(), "--by", by)  # fmt: skip
    key = (lambda r: r["period"][:10]) if by == "day" else (lambda r: r["dimension"])
    return {key(r): (r["calls"], r["seconds"]) for r in doc["rows"]}


@pytest.fixture
def world(dsn: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    prefix = f"cvuse{uuid.uuid4().hex[:6]}"
    roles = Roles.with_prefix(prefix)
    run("init", "--dsn", dsn, "--roles", "--role-prefix", prefix)
    with psycopg.connect(dsn, autocommit=True) as c:
        for name in roles.as_dict().values():
            c.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(name), sql.Literal(PASSWORD)))
    s = Settings(dsn=dsn).with_(roles=roles)
    yield {"dsn": dsn, "settings": s, "roles": roles, "store": new_dir(tmp_path / "store").as_uri()}
    drop_roles(dsn, roles)


def test_usage_counts_every_call_once_through_resends_late_calls_archive_and_erasure(world: dict[str, Any]) -> None:
    dsn, s = world["dsn"], world["settings"]
    with psycopg.connect(dsn) as conn:
        calls = _calls(conn, s, seed=31)
    newest_first = sorted(calls, key=lambda c: c["started_at"], reverse=True)  # old weeks arrive late
    ingest = role_dsn(dsn, world["roles"].ingest)
    with Writer(Settings(dsn=ingest), batch_rows=200) as w:
        w.write_many(newest_first[: len(calls) // 2])
        w.flush()
        w.write_many(newest_first)  # the first half again: re-sent, skipped by the key, counted once
        w.flush()
    with Writer(Settings(dsn=ingest), batch_rows=7) as w:  # small batches of re-sends mixed with nothing new
        w.write_many(calls[:50])
        w.flush()
    lo = min(c["started_at"] for c in calls) - timedelta(days=1)
    hi = max(c["started_at"] for c in calls) + timedelta(days=1)
    for t in TENANTS:
        assert _usage(dsn, t, lo, hi) == _by_day(calls, t)

    # archive and drop the oldest weeks: their usage stays
    run("archive", "--dsn", dsn, "--to", world["store"], "--at", AT)
    with psycopg.connect(dsn) as conn:
        starts = [p.info.start for p in catalog.list_partitions(conn, s) if p.info.start is not None]
        assert min(starts) > min(c["started_at"] for c in calls), "some weeks were archived and dropped"
    for t in TENANTS:
        assert _usage(dsn, t, lo, hi) == _by_day(calls, t)
    assert run_json("usage", "--dsn", dsn, "--check", "--store-url", world["store"])["ok"]

    # erasure: one hot call, one archived call (and its rollup row if it was the hour's only call)
    hot_call = max(calls, key=lambda c: c["started_at"])
    old_call = min(calls, key=lambda c: c["started_at"])
    for gone in (hot_call, old_call):
        run("erase", "--dsn", dsn, "--tenant-id", gone["tenant_id"], "--call-id", str(gone["call_id"]),
            "--store-url", world["store"])  # fmt: skip
        calls.remove(gone)
    for t in TENANTS:
        assert _usage(dsn, t, lo, hi) == _by_day(calls, t)
    assert run_json("usage", "--dsn", dsn, "--check", "--store-url", world["store"])["ok"]

    # a dimension: the past is recounted from hot + archive
    run("usage", "--dsn", dsn, "--dimension", "agent", "--store-url", world["store"])
    for t in TENANTS:
        want: Counter[str | None] = Counter()
        secs: Counter[str | None] = Counter()
        for c in calls:
            if c["tenant_id"] == t:
                agent = c["metadata"].get("agent")
                want[agent] += 1
                secs[agent] += c["duration_sec"] or 0
        assert _usage(dsn, t, lo, hi, by="agent") == {a: (want[a], secs[a]) for a in want}
        assert _usage(dsn, t, lo, hi) == _by_day(calls, t), "by day is unchanged by the dimension"

    # a rollup damaged by hand: check says so (exit 3), rebuild repairs it from hot + archive
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE callvault.usage SET calls = calls + 5 WHERE tenant_id = %s", (TENANTS[0],))
    bad = run("usage", "--dsn", dsn, "--check", "--store-url", world["store"], ok=False)
    assert bad.exit_code == 3 and "usage --rebuild" in bad.stderr
    rebuilt = run_json("usage", "--dsn", dsn, "--rebuild", "--store-url", world["store"])
    assert rebuilt["rebuilt"] and rebuilt["differences_total"] > 0
    assert run_json("usage", "--dsn", dsn, "--check", "--store-url", world["store"])["ok"]
    assert _usage(dsn, TENANTS[0], lo, hi) == _by_day(calls, TENANTS[0])


def test_the_app_role_reads_one_tenants_usage(world: dict[str, Any]) -> None:
    dsn, s = world["dsn"], world["settings"]
    with psycopg.connect(dsn) as conn:
        calls = _calls(conn, s, seed=7)
    with Writer(Settings(dsn=role_dsn(dsn, world["roles"].ingest))) as w:
        w.write_many(calls)
        w.flush()
    lo = min(c["started_at"] for c in calls)
    hi = max(c["started_at"] for c in calls) + timedelta(hours=1)
    with psycopg.connect(role_dsn(dsn, world["roles"].app), prepare_threshold=None) as app:
        reader = Reader(app, s)
        for t in TENANTS:
            rows = reader.usage(t, since=lo, until=hi, by="day")  # by hour: at most 93 days
            assert sum(r.calls for r in rows) == sum(1 for c in calls if c["tenant_id"] == t)
        # the rollup itself, read directly: row-level security shows the tenant of the transaction only
        with app.transaction():
            app.execute("SELECT set_config('app.tenant_id', %s, true)", (TENANTS[1],))
            seen = {r[0] for r in app.execute("SELECT DISTINCT tenant_id::text FROM callvault.usage")}
        assert seen == {TENANTS[1]}
        with app.transaction():
            assert app.execute("SELECT count(*) FROM callvault.usage").fetchone() == (0,), "no tenant: no rows"


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--tenant-id", "nope", "--since", "2026-01-01"], 2, "nope"),
        (["--tenant-id", TENANTS[0], "--since", "2026-01-01", "--by", "agent"], 2, "usage --dimension agent"),
        (["--tenant-id", TENANTS[0], "--since", "2020-01-01", "--until", "2026-01-01", "--by", "hour"], 2, "wide"),
        (["--tenant-id", TENANTS[0]], 2, "--since"),
        (["--check", "--rebuild"], 2, "give one"),
        (["--check", "--tenant-id", TENANTS[0]], 2, "whole table"),
        (["--dimension", "a b"], 2, "metadata key"),
    ],
)
def test_bad_usage_input_is_one_line(world: dict[str, Any], args: list[str], code: int, says: str) -> None:
    done = run("usage", "--dsn", world["dsn"], *args, ok=False)
    lines = [x for x in done.stderr.splitlines() if x.strip()]
    assert done.exit_code == code and len(lines) == 1 and says in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_the_caller_key_cannot_be_the_dimension(world: dict[str, Any]) -> None:
    run("privacy", "subject", "--dsn", world["dsn"], "--metadata-key", "caller")
    done = run("usage", "--dsn", world["dsn"], "--dimension", "caller", ok=False)
    assert done.exit_code == 2 and "personal data" in done.stderr
