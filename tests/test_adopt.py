"""A platform's own columns, end to end, and adopting an existing table online (issue 28).

Real parts only: the embedded cluster, a file:// archive store read back by DuckDB, the CLI in-process and
as a process killed with SIGKILL."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from callvault.archive.reader import read_calls
from callvault.config import Settings
from callvault.errors import InvalidSetting
from callvault.ingest import Writer
from callvault.query import Reader
from tests.helpers import new_dir, run, run_json
from tests.test_archive import PARTITION_STARTS, fill

CLI = [str(Path(sys.executable).parent / "callvault")]
T1, T2, T3 = (f"00000000-0000-4000-8000-{i:012d}" for i in (1, 2, 3))


def _starts(conn: psycopg.Connection[Any]) -> list[datetime]:
    return sorted(r[0] for r in conn.execute(PARTITION_STARTS).fetchall())


def _server_now(conn: psycopg.Connection[Any]) -> datetime:
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


# -- your columns, first-class ---------------------------------------------------------------------
def test_extra_columns_round_trip_writer_reader_archive_restore(
    dsn: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    run("init", "--dsn", dsn)
    fill(conn, per_tenant_week=5)
    store = new_dir(tmp_path / "store").as_uri()
    starts = _starts(conn)
    now = _server_now(conn)
    # the oldest week is archived before the columns exist: it must read back with NULLs there
    first = run_json("archive", "--dsn", dsn, "--to", store, "--at", (now + timedelta(weeks=1)).isoformat())
    assert [p["step_after"] for p in first["partitions"]] == ["dropped"]

    assert run_json("columns", "add", "agent_id", "text", "--index", "--dsn", dsn)["indexed"] is True
    run("columns", "add", "cost_cents", "int", "--dsn", dsn)
    run("columns", "add", "model", "varchar(20)", "--dsn", dsn)
    for bad, why in ((["1bad", "text"], "column name"), (["x", "money"], "not one callvault carries"),
                     (["tenant_id", "text"], "callvault's own")):  # fmt: skip
        r = run("columns", "add", *bad, "--dsn", dsn, ok=False)
        assert r.exit_code == 2 and why in r.output, r.output
    listed = run_json("columns", "list", "--dsn", dsn)
    assert [(c["name"], c["type"], c["indexed"]) for c in listed] == [
        ("agent_id", "text", True), ("cost_cents", "integer", False), ("model", "character varying(20)", False)
    ]  # fmt: skip

    week2 = starts[1] + timedelta(hours=5)
    good = [uuid.uuid4() for _ in range(2)]
    bad_id = uuid.uuid4()
    with Writer(dsn) as w:
        w.write({"tenant_id": T1, "call_id": good[0], "started_at": week2, "agent_id": "a1", "cost_cents": 12,
                 "model": "m-1"})  # fmt: skip
        w.write({"tenant_id": T1, "call_id": good[1], "started_at": week2 + timedelta(minutes=1), "agent_id": "a2"})
        w.write({"tenant_id": T1, "call_id": bad_id, "started_at": week2, "cost_cents": "twelve"})
        got = w.flush()
    assert (got.written, got.quarantined) == (2, 1)
    reason = conn.execute("SELECT reason FROM callvault.quarantine").fetchone()
    assert reason is not None and "cost_cents must be an int" in reason[0] and "twelve" not in reason[0]

    reader = Reader(conn, Settings(dsn=dsn), store_url=store)
    hot = reader.get_call(T1, good[0])
    assert hot is not None and hot.extra == {"agent_id": "a1", "cost_cents": 12, "model": "m-1"}
    window = {"since": starts[0], "until": starts[2]}
    page = reader.recent_calls(T1, **window, where={"agent_id": "a1"}, columns=("cost_cents", "model"))
    assert [(c.call_id, c.extra) for c in page] == [(good[0], {"cost_cents": 12, "model": "m-1"})]
    conn.execute("SET enable_seqscan = off")  # a few rows: prove the index is there and usable, not cheapest
    plan = conn.execute(
        "EXPLAIN (FORMAT JSON) SELECT id FROM call_logs WHERE tenant_id = %s AND agent_id = 'a1' "
        "AND started_at >= %s AND started_at < %s",
        (T1, starts[1], starts[2]),
    ).fetchone()
    assert plan is not None and "_agent_id_idx" in str(plan[0]), "the filter uses the column's index"
    conn.execute("RESET enable_seqscan")
    with pytest.raises(InvalidSetting, match="own columns"):
        reader.recent_calls(T1, **window, where={"tenant_id": T2})
    # lint and explain take queries on the table's own columns like any other
    query = "SELECT id, agent_id FROM call_logs WHERE tenant_id = $1 AND agent_id = $2 AND started_at >= $3 " \
            "AND started_at < $4"  # fmt: skip
    (tmp_path / "q.sql").write_text(query + ";\n")
    assert run("lint", str(tmp_path / "q.sql")).exit_code == 0
    lo, hi = starts[1].isoformat(), starts[2].isoformat()
    explained = run_json("explain", "--dsn", dsn, query, "-p", T1, "-p", "a1", "-p", lo, "-p", hi)
    assert explained["ok"] and explained["partitions_scanned"] == 1, explained

    # archive the second week (with the columns), then read both archived weeks through DuckDB and the tier
    second = run_json("archive", "--dsn", dsn, "--to", store, "--at", (now + timedelta(weeks=2)).isoformat())
    assert [p["step_after"] for p in second["partitions"]] == ["dropped"]
    table = read_calls(T1, since=starts[0], until=starts[2], settings=Settings(dsn=dsn), store_url=store)
    rows = {r["call_id"]: r for r in table.to_pylist()}
    assert rows[str(good[0])]["agent_id"] == "a1" and rows[str(good[0])]["cost_cents"] == 12
    assert rows[str(good[1])]["model"] is None
    old = [r for r in rows.values() if r["started_at"] < starts[1]]
    assert old and all(r["agent_id"] is None for r in old), "a week archived before the column reads NULL"
    archived = reader.get_call(T1, good[0], started_at=week2)
    assert archived is not None and archived.tier == "archive" and archived.extra["model"] == "m-1"
    page = reader.recent_calls(T1, **window, where={"agent_id": "a2"}, columns=("agent_id", "cost_cents"))
    assert [(c.call_id, c.tier, c.extra) for c in page] == [
        (good[1], "archive", {"agent_id": "a2", "cost_cents": None})
    ]

    for week in (starts[0], starts[1]):
        run("restore", "--dsn", dsn, "--to", store, "--period", week.date().isoformat())
    back = conn.execute(
        "SELECT call_id, agent_id, cost_cents, model FROM call_logs WHERE started_at < %s AND tenant_id = %s",
        (starts[2], T1),
    ).fetchall()
    by_id = {str(r[0]): r[1:] for r in back}
    assert by_id[str(good[0])] == ("a1", 12, "m-1") and by_id[str(good[1])] == ("a2", None, None)
    assert len(back) == len(rows), "every archived row of both weeks is back"


# -- adopt -----------------------------------------------------------------------------------------
SOURCE_DDL = """
CREATE TABLE calls (
    id          bigserial PRIMARY KEY,
    tenant      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    agent_id    text,
    direction   text,
    from_number text,
    cost_cents  integer,
    transcript  text
)"""
CHECKSUM = """SELECT {tenant}::text, date_trunc('day', {ts} AT TIME ZONE 'UTC')::date, count(*),
                     sum(hashtext(id::text || coalesce(agent_id, '') || coalesce(cost_cents::text, '')
                                  || coalesce(transcript, '')))
              FROM {table} {where} GROUP BY 1, 2"""


def _source(conn: psycopg.Connection[Any], rows: int, weeks: int = 13) -> None:
    """``rows`` calls over ``weeks`` weeks back from the server's now, three tenants, and four problem rows."""
    conn.execute(SOURCE_DDL)
    conn.execute(
        """INSERT INTO calls (tenant, created_at, agent_id, direction, from_number, cost_cents, transcript)
           SELECT (ARRAY[%s, %s, %s])[1 + i %% 3], now() - (i * %s * 7.0 / %s) * interval '1 day' - interval '1 s',
                  'agent' || i %% 7, CASE WHEN i %% 2 = 0 THEN 'in' ELSE 'out' END, '+44 20 7946 ' || i, i %% 500,
                  repeat('word ', 30) || i
           FROM generate_series(1, %s) i""",
        (T1, T2, T3, weeks, rows, rows),
    )
    conn.execute(
        """INSERT INTO calls (tenant, created_at) VALUES (NULL, now()), ('acme', now()),
           (%s, now() + interval '5 years'), (%s, now() - interval '3 hours')""",
        (T1, T2),
    )


def _expected(conn: psycopg.Connection[Any]) -> set[tuple[Any, ...]]:
    valid = "WHERE tenant ~ '^[0-9a-f-]{36}$' AND created_at < now() + interval '1 year'"
    stmt = CHECKSUM.format(tenant="tenant", ts="created_at", table="calls", where=valid)
    return set(conn.execute(stmt).fetchall())


def _actual(conn: psycopg.Connection[Any]) -> set[tuple[Any, ...]]:
    return set(conn.execute(CHECKSUM.format(tenant="tenant_id", ts="started_at", table="call_logs", where="")))


class _AppWriter(threading.Thread):
    """The application: keeps inserting through the old name, one INSERT a transaction, and records every
    id it was told was committed and the longest time an INSERT took."""

    def __init__(self, dsn: str, per_s: float) -> None:
        super().__init__(daemon=True)
        self.dsn, self.per_s = dsn, per_s
        self.ids: list[int] = []
        self.longest = 0.0
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as c:
                i = 0
                while not self.stop.is_set():
                    t0 = time.monotonic()
                    row = c.execute(
                        "INSERT INTO calls (tenant, created_at, agent_id, cost_cents, transcript) "
                        "VALUES (%s, now() - interval '2 s', 'app', %s, 'live call') RETURNING id",
                        ((T1, T2, T3)[i % 3], i),
                    ).fetchone()
                    self.longest = max(self.longest, time.monotonic() - t0)
                    assert row is not None
                    self.ids.append(int(row[0]))
                    i += 1
                    time.sleep(max(0.0, 1 / self.per_s - (time.monotonic() - t0)))
        except BaseException as e:
            self.error = e


def test_adopt_while_the_application_writes(dsn: str, conn: psycopg.Connection[Any], tmp_path: Path) -> None:
    _source(conn, 20_000, weeks=16)  # three weeks past the 90-day retention: archived once moved
    expected_before = _expected(conn)
    plan = run_json("adopt", "calls", "--dsn", dsn, "--time-column", "created_at", "--tenant-column", "tenant",
                    "--dry-run")["plan"]  # fmt: skip
    assert plan["rows"] == 20_004 and plan["no_tenant"] == 1 and plan["bad_tenant"] == 1 and plan["future"] == 1
    assert list(plan["extras"]) == ["agent_id", "direction", "from_number", "cost_cents"]
    assert conn.execute("SELECT relkind FROM pg_class WHERE relname = 'calls'").fetchone() == ("r",), "dry run"

    app = _AppWriter(dsn, per_s=200)
    app.start()
    time.sleep(0.5)
    store = new_dir(tmp_path / "store").as_uri()
    report = run_json("adopt", "calls", "--dsn", dsn, "--time-column", "created_at", "--tenant-column", "tenant",
                      "--batch-rows", "2000", "--store", store)  # fmt: skip
    time.sleep(0.5)
    app.stop.set()
    app.join()
    assert app.error is None, app.error
    assert report["phase"] == "done" and report["quarantined"] == 3
    assert sorted(report["reasons"].values()) == [1, 1, 1], report["reasons"]
    print(f"longest application INSERT during adopt: {app.longest * 1000:.0f} ms ({len(app.ids)} inserts)")

    # every row once: the old ones (archived past retention, the rest hot) and every one the application wrote
    assert conn.execute("SELECT relkind FROM pg_class WHERE relname = 'calls'").fetchone() == ("v",)
    assert conn.execute("SELECT to_regclass('calls_cv_old')").fetchone() == (None,)
    ids = [r[0] for r in conn.execute("SELECT id FROM call_logs").fetchall()]
    assert len(ids) == len(set(ids))
    assert set(app.ids) <= set(ids), "every insert the application saw commit is there"
    hot_and_written = _actual(conn)
    settings = Settings(dsn=dsn)
    archived = sum(
        read_calls(t, since=datetime(2000, 1, 1, tzinfo=UTC), until=datetime.now(UTC) + timedelta(days=1),
                   settings=settings, store_url=store).num_rows
        for t in (T1, T2, T3)
    )  # fmt: skip
    hot_old = conn.execute("SELECT count(*) FROM call_logs WHERE agent_id IS DISTINCT FROM 'app'").fetchone()
    assert hot_old is not None and hot_old[0] + archived == sum(r[2] for r in expected_before)
    assert report["archived_partitions"] >= 2 and archived > 0
    # through the old name: the application's columns, its rows, its zone-less view of them
    row = conn.execute("SELECT tenant, agent_id, cost_cents FROM calls WHERE id = %s", (app.ids[-1],)).fetchone()
    assert row is not None and row[0] in (T1, T2, T3) and row[1] == "app"
    assert conn.execute("SELECT count(*) FROM callvault.quarantine WHERE reason LIKE 'adopt:%'").fetchone() == (3,)
    # docs/adopt.md: a quarantined row, fixed, goes back in through the old name
    (raw,) = conn.execute("SELECT raw FROM callvault.quarantine WHERE reason LIKE 'adopt: tenant is NULL%'").fetchone()
    conn.execute(
        "INSERT INTO calls SELECT * FROM jsonb_populate_record(NULL::calls, "
        "jsonb_set(%s::jsonb, '{tenant}', to_jsonb(%s::text)))",
        (raw, T3),
    )
    back = conn.execute("SELECT tenant_id FROM call_logs WHERE id = %s", (json.loads(raw)["id"],)).fetchone()
    assert back == (uuid.UUID(T3),)
    assert hot_and_written  # per tenant/day sums computed above are well-formed
    r = run("audit", "--dsn", dsn)
    assert "ok" in r.output
    run("health", "--dsn", dsn)
    again = run_json("adopt", "calls", "--dsn", dsn, "--store", store)
    assert again["phase"] == "done", "a finished adoption is a no-op"


def test_adopt_killed_at_random_points_ends_the_same(dsn: str, conn: psycopg.Connection[Any]) -> None:
    _source(conn, 30_000, weeks=10)
    expected = _expected(conn)
    args = [*CLI, "adopt", "calls", "--dsn", dsn, "--time-column", "created_at", "--tenant-column", "tenant",
            "--batch-rows", "500", "--keep-old"]  # fmt: skip
    env = {**os.environ}
    rng = random.Random(28)
    kills = 0
    for _ in range(4):
        p = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.3, 2.5))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait()
    done = subprocess.run([*args, "--json"], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert kills >= 1
    assert _actual(conn) == expected, "every row exactly once, whatever the kills interrupted"
    assert conn.execute("SELECT count(*) FROM callvault.quarantine").fetchone() == (3,)


def test_adopt_refuses_bad_input_and_leaves_the_table(dsn: str, conn: psycopg.Connection[Any]) -> None:
    conn.execute(SOURCE_DDL)
    conn.execute("INSERT INTO calls (tenant, created_at) VALUES (%s, now() - interval '1 day')", (T1,))
    base = ["--dsn", dsn, "--keep-old"]
    cases = [
        (["nope", "--time-column", "created_at", "--tenant-column", "tenant"], 2, "does not exist"),
        (["calls", "--time-column", "made_at", "--tenant-column", "tenant"], 2, "no such column"),
        (["calls", "--time-column", "agent_id", "--tenant-column", "tenant"], 2, "must be timestamptz"),
        (["calls", "--time-column", "created_at", "--tenant-column", "cost_cents"], 2, "uuid or text"),
        (["calls", "--time-column", "created_at", "--tenant-column", "tenant", "--map", "agent_id=ended_at"], 2,
         "convert it first"),
        (["calls", "--time-column", "created_at", "--tenant-column", "tenant", "--time-zone", "Mars/Olympus"], 2,
         "time zone"),
    ]  # fmt: skip
    for args, code, why in cases:
        r = run("adopt", *args, *base, ok=False)
        assert r.exit_code == code and why in r.output and "Traceback" not in r.output, (args, r.output)
    conn.execute("CREATE TABLE public.parted (id bigint, at timestamptz) PARTITION BY RANGE (at)")
    r = run("adopt", "parted", "--time-column", "at", "--tenant-column", "id", *base, ok=False)
    assert r.exit_code == 65 and "already partitioned" in r.output, r.output


def test_adopt_without_its_lock_gives_up_and_resumes(realtime_dsn: str) -> None:
    """A lock that cannot be had within the budget: exit 75, the table as it was, and a re-run finishes.
    On a server on the real clock: its lock_timeout must fire (tests/clock.py, the known limit)."""
    dsn = realtime_dsn
    base = ["--dsn", dsn, "--keep-old"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SOURCE_DDL.replace("CREATE TABLE calls", "CREATE TABLE public.calls"))
        conn.execute("INSERT INTO public.calls (tenant, created_at) VALUES (%s, now() - interval '1 day')", (T1,))
    with psycopg.connect(dsn) as holder:
        holder.execute("LOCK TABLE calls IN ACCESS SHARE MODE")
        r = run("adopt", "calls", "--time-column", "created_at", "--tenant-column", "tenant", *base, ok=False)
    assert r.exit_code == 75, r.output
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT relkind FROM pg_class WHERE relname = 'calls'").fetchone() == ("r",)
        assert conn.execute("SELECT count(*) FROM public.calls").fetchone() == (1,)
    done = run_json("adopt", "calls", *base)
    assert done["phase"] == "done" and done["moved"] == 1


def test_adopt_reads_zone_less_times_in_the_zone_given(dsn: str, conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE TABLE legacy (id serial PRIMARY KEY, account uuid NOT NULL, made timestamp NOT NULL, "
                 "ended_at timestamp, metadata json, plan_tier text)")  # fmt: skip
    local = (_server_now(conn) - timedelta(days=2)).astimezone(UTC).replace(tzinfo=None, microsecond=0)
    conn.execute(
        "INSERT INTO legacy (account, made, ended_at, metadata, plan_tier) VALUES (%s, %s, %s, '{\"a\": 1}', 'pro')",
        (T1, local, local + timedelta(minutes=3)),
    )
    run("adopt", "legacy", "--dsn", dsn, "--table", "calls_v2", "--time-column", "made", "--tenant-column",
        "account", "--time-zone", "Europe/Berlin", "--keep-old")  # fmt: skip
    row = conn.execute("SELECT started_at, duration_sec, metadata, plan_tier FROM calls_v2").fetchone()
    assert row is not None
    zone = __import__("zoneinfo").ZoneInfo("Europe/Berlin")
    assert row[0] == local.replace(tzinfo=zone) and row[2] == {"a": 1} and row[3] == "pro"
    view = conn.execute("SELECT made, ended_at, account FROM legacy").fetchone()
    assert view == (local, local + timedelta(minutes=3), uuid.UUID(T1)), "the old name shows what it showed"
    conn.execute("INSERT INTO legacy (account, made) VALUES (%s, %s)", (T2, local))
    assert conn.execute("SELECT count(*) FROM calls_v2 WHERE tenant_id = %s", (T2,)).fetchone() == (1,)


@pytest.mark.parametrize("free", [1])
def test_adopt_refuses_without_disk_room(dsn: str, conn: psycopg.Connection[Any], free: int,
                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from callvault import adopt

    conn.execute(SOURCE_DDL)
    conn.execute("INSERT INTO calls (tenant, created_at) VALUES (%s, now())", (T1,))
    monkeypatch.setattr(adopt, "_free_bytes", lambda _conn: free)  # the disk, not the database, is faked
    r = run("adopt", "calls", "--dsn", dsn, "--time-column", "created_at", "--tenant-column", "tenant", ok=False)
    assert r.exit_code == 69 and "free" in r.output
    assert conn.execute("SELECT relkind FROM pg_class WHERE relname = 'calls'").fetchone() == ("r",)


def test_adopt_a_tenant_column_of_names(dsn: str, conn: psycopg.Connection[Any]) -> None:
    """No tenant value is a UUID: the column holds names. Each gets a stable tenant_id (uuid3, the same in
    Python and SQL) and the name stays, shown through the old name and accepted on insert."""
    from callvault.adopt import tenant_uuid

    conn.execute("CREATE TABLE public.logs (id bigserial PRIMARY KEY, org text, at timestamptz NOT NULL, "
                 "cost numeric(10,2))")  # fmt: skip
    conn.execute(
        "INSERT INTO public.logs (org, at, cost) SELECT (ARRAY['acme', 'globex', 'Ünïcode Ltd'])[1 + i % 3], "
        "now() - i * interval '1 hour', i / 100.0 FROM generate_series(1, 300) i"
    )
    plan = run_json("adopt", "public.logs", "--dsn", dsn, "--table", "logs_p", "--time-column", "at",
                    "--tenant-column", "org", "--keep-old", "--dry-run")["plan"]  # fmt: skip
    assert plan["tenant_names"] and plan["bad_tenant"] == 0
    done = run_json("adopt", "public.logs", "--dsn", dsn, "--table", "logs_p", "--time-column", "at",
                    "--tenant-column", "org", "--keep-old")  # fmt: skip
    assert done["moved"] == 300 and done["quarantined"] == 0
    got = dict(conn.execute("SELECT org, tenant_id FROM logs_p GROUP BY 1, 2").fetchall())
    assert got == {name: tenant_uuid(name) for name in ("acme", "globex", "Ünïcode Ltd")}
    conn.execute("INSERT INTO public.logs (org, at, cost) VALUES ('initech', now(), 1.5)")
    row = conn.execute("SELECT tenant_id, cost FROM logs_p WHERE org = 'initech'").fetchone()
    assert row is not None and row[0] == tenant_uuid("initech") and str(row[1]) == "1.50"
    assert conn.execute("SELECT count(*) FROM public.logs WHERE org = 'acme'").fetchone() == (100,)
