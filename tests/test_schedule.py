"""schedule --pg-cron: the job exists in pg_cron's database and its command really maintains."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import psycopg.sql
import pytest

from callvault.config import Settings
from callvault.embedded import Cluster
from callvault.errors import InvalidSetting
from callvault.schedule import cron_expression, job_command, job_name, legacy_job_name
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
        assert conn.execute("SELECT job, outcome, host FROM callvault.job_history").fetchall() == [
            ("maintain", "ok", "pg_cron")
        ]  # callvault history and callvault_job_runs_total count pg_cron's runs too
    assert run_json("status", "--dsn", dsn)["last_maintenance"] is not None
    out = run("schedule", "--pg-cron", "--dsn", dsn, "--remove").stdout
    assert "removed 1" in out
    with psycopg.connect(cluster.dsn("postgres")) as cron:
        assert cron.execute("SELECT count(*) FROM cron.job WHERE database = %s", (dbname,)).fetchone() == (0,)


@pytest.fixture
def other_dsn(cluster: Cluster) -> Iterator[str]:
    """A second database of the session cluster, pg_partman installed (like ``dsn``)."""
    from tests.conftest import TEMPLATE, _create_db, _drop_db

    name = _create_db(cluster, TEMPLATE)
    yield cluster.dsn(name)
    _drop_db(cluster, name)


def _jobs(cluster: Cluster) -> set[tuple[str, str, str]]:
    """(jobname, database, schedule) of every callvault job in the cluster."""
    with psycopg.connect(cluster.dsn("postgres")) as cron:
        rows = cron.execute(
            "SELECT jobname, database, schedule FROM cron.job WHERE jobname LIKE 'callvault-maintain %'"
        ).fetchall()
    return set(rows)


def test_each_database_has_its_own_job(dsn: str, other_dsn: str, cluster: Cluster) -> None:
    """Issue 13: the job name carries the database, so B's schedule/remove never touches A's job."""
    a, b = (psycopg.conninfo.conninfo_to_dict(d)["dbname"] for d in (dsn, other_dsn))
    name_a, name_b = job_name(Settings(), str(a)), job_name(Settings(), str(b))
    assert name_a == f"callvault-maintain {a}:public.call_logs" and name_a != name_b
    before = _jobs(cluster)
    try:
        for d in (dsn, other_dsn):
            run("init", "--dsn", d)
        run("schedule", "--pg-cron", "--dsn", dsn)
        run("schedule", "--pg-cron", "--dsn", other_dsn, "--every", "1h")
        assert _jobs(cluster) - before == {(name_a, a, "*/15 * * * *"), (name_b, b, "0 * * * *")}
        out = run("schedule", "--pg-cron", "--dsn", other_dsn, "--remove").stdout
        assert "removed 1" in out and str(b) in out
        assert _jobs(cluster) - before == {(name_a, a, "*/15 * * * *")}
        assert "removed 0" in run("schedule", "--pg-cron", "--dsn", other_dsn, "--remove").stdout
        assert "removed 1" in run("schedule", "--pg-cron", "--dsn", dsn, "--remove").stdout
        assert _jobs(cluster) == before
    finally:
        _unschedule(cluster, {name_a, name_b})


def test_job_named_without_the_database_is_replaced_in_its_database_only(
    dsn: str, other_dsn: str, cluster: Cluster
) -> None:
    a, b = (str(psycopg.conninfo.conninfo_to_dict(d)["dbname"]) for d in (dsn, other_dsn))
    legacy, command = legacy_job_name(Settings()), job_command(Settings())
    names = {legacy, job_name(Settings(), a), job_name(Settings(), b)}
    before = _jobs(cluster)
    assert legacy not in {n for n, _, _ in before}
    try:
        for d in (dsn, other_dsn):
            run("init", "--dsn", d)
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as cron:  # what older callvault made
            cron.execute("SELECT cron.schedule_in_database(%s, '*/15 * * * *', %s, %s)", (legacy, command, a))
        run("schedule", "--pg-cron", "--dsn", other_dsn)  # B: A's old job is A's, left alone
        assert _jobs(cluster) - before == {(legacy, a, "*/15 * * * *"), (job_name(Settings(), b), b, "*/15 * * * *")}
        out = run("schedule", "--pg-cron", "--dsn", dsn, "--every", "5m").stdout  # A: replaced, not duplicated
        assert "replaced 1" in out
        assert _jobs(cluster) - before == {
            (job_name(Settings(), a), a, "*/5 * * * *"),
            (job_name(Settings(), b), b, "*/15 * * * *"),
        }
        # --remove in A also takes an old-named job of A's (here: made again by an older callvault)
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as cron:
            cron.execute("SELECT cron.schedule_in_database(%s, '*/15 * * * *', %s, %s)", (legacy, command, a))
        assert "removed 2" in run("schedule", "--pg-cron", "--dsn", dsn, "--remove").stdout
        assert _jobs(cluster) - before == {(job_name(Settings(), b), b, "*/15 * * * *")}
    finally:
        _unschedule(cluster, names)


def test_long_job_names_stay_distinct_within_63_bytes() -> None:
    table = "t" * 48
    s = Settings(schema="s" * 63, table=table)
    long_db = "d" * 63
    names = {job_name(s, long_db), job_name(s, long_db[:-1] + "e"), job_name(s.with_(table=table[:-1] + "u"), long_db)}
    assert len(names) == 3
    assert all(len(n.encode()) <= 63 and n.startswith("callvault-maintain ddd") for n in names)
    assert job_name(Settings(), "calls") == "callvault-maintain calls:public.call_logs"
    accented = job_name(Settings(table="é" * 24), "é" * 20)  # cut on a character boundary
    assert len(accented.encode()) <= 63


def test_hostile_database_and_long_names_schedule_and_remove(cluster: Cluster) -> None:
    """A database name with quotes and spaces, and a name past 63 bytes: one job each, removed by name."""
    from tests.conftest import TEMPLATE, _drop_db

    db = "cv sched 'quoted' \"db\" " + "x" * 30
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            psycopg.sql.Identifier(db), psycopg.sql.Identifier(TEMPLATE)))  # fmt: skip
    dsn = psycopg.conninfo.make_conninfo(cluster.dsn(), dbname=db)
    name = job_name(Settings(), db)
    try:
        run("init", "--dsn", dsn)
        run("schedule", "--pg-cron", "--dsn", dsn)
        run("schedule", "--pg-cron", "--dsn", dsn, "--every", "30m")
        assert {(n, d) for n, d, _ in _jobs(cluster) if d == db} == {(name, db)}
        assert "removed 1" in run("schedule", "--pg-cron", "--dsn", dsn, "--remove").stdout
        assert not [j for j in _jobs(cluster) if j[1] == db]
    finally:
        _unschedule(cluster, {name})
        _drop_db(cluster, db)


def _unschedule(cluster: Cluster, names: set[str]) -> None:
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as cron:
        cron.execute("SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname = ANY(%s::name[])", (list(names),))


def test_schedule_before_init_names_the_fix(dsn: str, cluster: Cluster) -> None:
    res = run("schedule", "--pg-cron", "--dsn", dsn, ok=False)
    assert res.exit_code == 66 and "Traceback" not in res.stderr
    assert "callvault init" in res.stderr, res.stderr
    dbname = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(cluster.dsn("postgres")) as cron:
        assert cron.execute("SELECT count(*) FROM cron.job WHERE database = %s", (dbname,)).fetchone() == (0,)
    assert "removed 0" in run("schedule", "--pg-cron", "--dsn", dsn, "--remove").stdout  # nothing to remove: fine


def test_schedule_without_pg_cron_rights_is_one_line_with_the_grant(dsn: str, cluster: Cluster) -> None:
    """A non-superuser owner may not schedule into another database: the message names the role and the GRANT."""
    run("init", "--dsn", dsn, "--roles")
    role = "cv_sched_nonsuper"
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as su:
        su.execute(psycopg.sql.SQL("DROP ROLE IF EXISTS {}").format(psycopg.sql.Identifier(role)))
        su.execute(psycopg.sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw' IN ROLE callvault_owner").format(
            psycopg.sql.Identifier(role)))  # fmt: skip
    try:
        as_owner = psycopg.conninfo.make_conninfo(dsn, user=role, password="pw")
        dbname = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
        res = run("schedule", "--pg-cron", "--dsn", as_owner, ok=False)
        assert res.exit_code != 0 and "Traceback" not in res.stderr
        flat = " ".join(res.stderr.split())
        assert "pg_cron job for public.call_logs" in flat and f"{role} may not read cron.database_name" in flat
        assert f"GRANT pg_read_all_settings TO {role}" in flat and "cron.schedule_in_database" in flat
        # granted as the message says, it gets to pg_cron itself: now schedule_in_database names its GRANT
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as su:
            su.execute(psycopg.sql.SQL("GRANT pg_read_all_settings TO {}").format(psycopg.sql.Identifier(role)))
            su.execute(psycopg.sql.SQL("GRANT USAGE ON SCHEMA cron TO {}").format(psycopg.sql.Identifier(role)))
        res = run("schedule", "--pg-cron", "--dsn", as_owner, ok=False)
        flat = " ".join(res.stderr.split())
        assert res.exit_code != 0 and "Traceback" not in res.stderr
        assert f"pg_cron job for public.call_logs in database {dbname}" in flat, flat
        grant = f"GRANT EXECUTE ON FUNCTION cron.schedule_in_database(text,text,text,text,text,boolean) TO {role}"
        assert grant in flat and "permission denied for function schedule_in_database" in flat, flat
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as su:  # the last grant the message names
            su.execute(grant)
        run("schedule", "--pg-cron", "--dsn", as_owner)
        assert (job_name(Settings(), dbname), dbname, "*/15 * * * *") in _jobs(cluster)
        assert "removed 1" in run("schedule", "--pg-cron", "--dsn", as_owner, "--remove").stdout
    finally:
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as su:
            su.execute(psycopg.sql.SQL("DROP OWNED BY {}").format(psycopg.sql.Identifier(role)))
            su.execute(psycopg.sql.SQL("DROP ROLE IF EXISTS {}").format(psycopg.sql.Identifier(role)))
