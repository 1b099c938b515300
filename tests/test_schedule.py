"""schedule --pg-cron: the job exists in pg_cron's database and its command really maintains."""

from __future__ import annotations

import psycopg
import pytest

from callvault.config import Settings
from callvault.embedded import Cluster
from callvault.errors import InvalidSetting
from callvault.schedule import cron_expression, job_command
from tests.helpers import run, run_json


@pytest.mark.parametrize(
    ("every", "expr"),
    [
        ("15m", "*/15 * * * *"),
        ("1m", "* * * * *"),
        ("30M", "*/30 * * * *"),
        ("1h", "0 * * * *"),
        ("6h", "0 */6 * * *"),
        ("1d", "0 0 * * *"),
        ("5 4 * * 0", "5 4 * * 0"),
    ],
)
def test_cron_expression(every: str, expr: str) -> None:
    assert cron_expression(every) == expr


@pytest.mark.parametrize("every", ["7m", "0m", "fortnightly", "5h", "2d", ""])
def test_cron_expression_rejects(every: str) -> None:
    with pytest.raises(InvalidSetting, match="--every"):
        cron_expression(every)


def test_schedule_install_update_remove(dsn: str, cluster: Cluster) -> None:
    run("init", "--dsn", dsn)
    dbname = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    run("schedule", "--pg-cron", "--dsn", dsn)
    run("schedule", "--pg-cron", "--dsn", dsn, "--every", "5m")
    with psycopg.connect(cluster.dsn("postgres")) as cron:
        jobs = cron.execute(
            "SELECT schedule, command, database FROM cron.job WHERE database = %s", (dbname,)
        ).fetchall()
    assert jobs == [("*/5 * * * *", job_command(Settings()), dbname)]
    # what pg_cron will run works and is recorded
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(jobs[0][1])
        assert conn.execute("SELECT source FROM callvault.maintenance_log").fetchall() == [("pg_cron",)]
    assert run_json("status", "--dsn", dsn)["last_maintenance"] is not None
    out = run("schedule", "--pg-cron", "--dsn", dsn, "--remove").stdout
    assert "removed 1" in out
    with psycopg.connect(cluster.dsn("postgres")) as cron:
        assert cron.execute("SELECT count(*) FROM cron.job WHERE database = %s", (dbname,)).fetchone() == (0,)
