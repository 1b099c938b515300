"""pg_partman 5.x for real (issue 25): the lifecycle on 4.7 and 5.x side by side, and the update path.

pg_partman 5.x is not a Debian bookworm package and the project never builds outside source: these
tests run where an operator installed it beside Debian's 4.7 (``CREATE EXTENSION pg_partman VERSION
'5.1.0'`` works; docs/partman.md) and are skipped elsewhere with one line naming what is missing. The
4.7 cases always run.

Each case: writes over the ~83 days the partitions cover (derived from the catalog's bounds), the clock
moved 120 days ahead with ``--at``, ``maintain`` (pg_partman's own retention detaches the expired weeks),
``archive``: every detached week archived and dropped, the archive holding exactly what was written per
tenant and week; one week restored; the plan empty; status without problems.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from callvault import commands, engines, schema
from callvault.config import Settings
from callvault.naming import ISO_WEEKLY
from tests.helpers import new_dir, run, run_json
from tests.test_archive import fill

AT = (datetime.now(UTC) + timedelta(days=120)).replace(microsecond=0)
P5 = engines.partman_latest(5)
needs_5 = pytest.mark.skipif(P5 is None, reason=engines.partman5_missing_reason() if P5 is None else "")


def _partman(dsn: str, version: str | None) -> None:
    """The fresh database's pg_partman at ``version`` (None: Debian's default, 4.7)."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("DROP EXTENSION pg_partman")
        if version is None:
            c.execute("CREATE EXTENSION pg_partman SCHEMA partman")
        else:
            c.execute(sql.SQL("CREATE EXTENSION pg_partman SCHEMA partman VERSION {}").format(sql.Literal(version)))


def _update(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(sql.SQL("ALTER EXTENSION pg_partman UPDATE TO {}").format(sql.Literal(P5)))


def _written(conn: psycopg.Connection) -> dict[tuple[str, str], int]:
    """Rows per (week start, tenant) as written."""
    rows = conn.execute(
        "SELECT date_trunc('week', started_at AT TIME ZONE 'UTC')::date::text, tenant_id::text, count(*) "
        "FROM call_logs GROUP BY 1, 2"
    ).fetchall()
    return {(w, t): n for w, t, n in rows}


LEFTOVERS = (
    "SELECT relname FROM pg_class WHERE relname LIKE 'call\\_logs\\_p%%' AND relkind = 'r' AND NOT relispartition"
)


def _lifecycle(dsn: str, store: Path, written: dict[tuple[str, str], int]) -> None:
    at = AT.isoformat()
    run("maintain", "--dsn", dsn, "--at", at)
    detached = {d["name"] for d in run_json("status", "--dsn", dsn)["detached_awaiting_archive"]}
    with psycopg.connect(dsn) as c:
        left = len(c.execute(LEFTOVERS).fetchall())
    assert left > 0, "pg_partman's retention detached the expired weeks"
    report = run_json("archive", "--dsn", dsn, "--to", store.as_uri(), "--at", at, "--new-store")
    done = [p for p in report["partitions"] if p["step_after"] == "dropped" and not p.get("error")]
    assert len(done) == len(report["partitions"]) >= left, report
    assert detached <= {p["partition"] for p in done}
    with psycopg.connect(dsn) as c:
        assert c.execute(LEFTOVERS).fetchall() == [], "every detached week archived and dropped"
    # the archive holds exactly what was written, per tenant and week
    archived = run_json("archive", "query", "--dsn", dsn, "SELECT week::text AS w, tenant_id AS t, count(*) AS n "
                        "FROM call_logs GROUP BY 1, 2")  # fmt: skip
    got = {(r["w"], r["t"]): r["n"] for r in archived}
    assert got and all(written[k] == n for k, n in got.items()), "archived rows equal written rows"
    weeks = {w for w, _ in got}
    with psycopg.connect(dsn) as c:
        hot = _written(c)
    assert all(k in got or k[0] not in weeks for k in written) and not set(got) & set(hot)
    assert run_json("plan", "--dsn", dsn, "--at", at)["is_empty"], "nothing left to do at that instant"
    # one week back, verified
    week = sorted(weeks)[-1]
    back = run_json("restore", "--dsn", dsn, "--week", week)
    assert back["rows"] == sum(n for (w, _), n in got.items() if w == week)
    status = commands.status(Settings(dsn=dsn), AT)
    assert not [p for p in status.problems if "pg_partman" in p], status.problems


@pytest.mark.parametrize("version", [None, pytest.param("5", marks=needs_5)], ids=["4.7", "5.x"])
def test_the_lifecycle_on_each_major(dsn: str, conn: psycopg.Connection, tmp_path: Path, version: str | None) -> None:
    _partman(dsn, P5 if version else None)
    run("init", "--dsn", dsn)
    fill(conn)
    conn.commit()
    names = [p["name"] for p in run_json("status", "--dsn", dsn)["partitions"]]
    assert all(n.startswith("call_logs_p") and "w" not in n[len("call_logs_p") :] for n in names), names
    _lifecycle(dsn, new_dir(tmp_path / "store"), _written(conn))


@needs_5
def test_update_to_5_midway(dsn: str, conn: psycopg.Connection, tmp_path: Path) -> None:
    """A table made by `callvault init` under 4.7.2, the extension updated to 5.x, the lifecycle goes on."""
    run("init", "--dsn", dsn)
    fill(conn)
    conn.commit()
    _update(dsn)
    assert run_json("status", "--dsn", dsn)["partman_version"] == P5
    _lifecycle(dsn, new_dir(tmp_path / "store"), _written(conn))


@needs_5
def test_an_iso_weekly_table_is_migrated_and_its_old_weeks_still_archived(
    dsn: str, conn: psycopg.Connection, tmp_path: Path
) -> None:
    """An install from before: 4.7's named 'weekly' (ISO names p2026w37). Its expired weeks detached under
    4.7 keep those names; after the update to 5.x maintenance is refused naming the fix, `migrate-names`
    renames the attached ones, and the old-named detached weeks are still archived."""
    settings = Settings(dsn=dsn)
    start = (datetime.now(UTC) - timedelta(days=91)).replace(hour=0, minute=0, second=0, microsecond=0)
    start -= timedelta(days=start.weekday())
    conn.execute(schema.create_table_sql(settings))
    conn.execute(
        "SELECT partman.create_parent(p_parent_table => 'public.call_logs', p_control => 'started_at', "
        "p_interval => 'weekly', p_type => 'native', p_premake => 4, p_start_partition => %s, p_jobmon => false)",
        (start.strftime("%Y-%m-%d %H:%M:%S+00"),),
    )
    conn.execute("DROP TABLE call_logs_default")
    conn.execute(
        "UPDATE partman.part_config SET retention = '90 days', retention_keep_table = true, "
        "infinite_time_partitions = true WHERE parent_table = 'public.call_logs'"
    )
    conn.commit()
    run("init", "--dsn", dsn)  # callvault adopts it as its own (policy, RLS, bookkeeping)
    assert conn.execute("SELECT datetime_string FROM partman.part_config").fetchone()[0] == ISO_WEEKLY
    fill(conn)
    conn.commit()
    written = _written(conn)
    st = run_json("status", "--dsn", dsn)
    assert any("migrate-names" in n for n in st["notes"]), st["notes"]
    run("maintain", "--dsn", dsn, "--at", (datetime.now(UTC) + timedelta(days=30)).isoformat())  # detaches, 4.7
    old_detached = [r[0] for r in conn.execute(LEFTOVERS).fetchall()]
    assert old_detached and all("w" in n[len("call_logs_p") :] for n in old_detached), old_detached
    _update(dsn)
    refused = run("maintain", "--dsn", dsn, ok=False)
    assert refused.exit_code == 66 and "migrate-names" in refused.stderr, refused.stderr
    health = run("health", "--dsn", dsn, ok=False)
    assert health.exit_code == 3 and "migrate-names" in health.output
    dry = run_json("migrate-names", "--dsn", dsn, "--dry-run")
    assert dry["renames"] and all("w" in r["from"][len("call_logs_p") :] for r in dry["renames"])
    done = run_json("migrate-names", "--dsn", dsn)
    assert done["datetime_string_after"] == "YYYYMMDD" and len(done["renames"]) == len(dry["renames"])
    assert run_json("migrate-names", "--dsn", dsn)["renames"] == []  # idempotent
    _lifecycle(dsn, new_dir(tmp_path / "store"), written)
