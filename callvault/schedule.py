"""``callvault schedule --pg-cron``: run maintenance inside Postgres every N minutes.

pg_cron lives in one database (``cron.database_name``); the job is created there with
``cron.schedule_in_database`` so it runs in the database that holds the table. The job calls
``callvault.run_maintenance(...)`` (created by ``init``), which pins UTC and logs the run.
"""

from __future__ import annotations

import re

from psycopg import conninfo, sql

from callvault.config import META_SCHEMA, Settings
from callvault.db import Conn, connect
from callvault.errors import ExtensionMissing, InvalidSetting

DEFAULT_EVERY = "15m"  # the seed's maintenance cadence
_EVERY = re.compile(r"^\s*(\d+)\s*([mhd])\s*$", re.IGNORECASE)

PG_CRON_HINT = (
    "pg_cron is not loaded in this server: install it (Debian: `apt-get install postgresql-15-cron`), add "
    "shared_preload_libraries = 'pg_cron' and cron.database_name to postgresql.conf and restart; or use "
    "crontab/systemd/Kubernetes with `callvault maintain` instead (see docs/operations.md)"
)


def cron_expression(every: str) -> str:
    """``15m`` -> ``*/15 * * * *``, ``2h`` -> ``0 */2 * * *``, ``1d`` -> ``0 0 * * *``; 5-field cron passes."""
    if len(every.split()) == 5:
        return every.strip()
    m = _EVERY.match(every)
    if not m:
        raise InvalidSetting(f"--every {every!r}: use minutes/hours/days like 15m, 1h, 1d, or a cron expression")
    n, unit = int(m.group(1)), m.group(2).lower()
    limits = {"m": 60, "h": 24, "d": 1}
    if n < 1 or limits[unit] % n:
        raise InvalidSetting(
            f"--every {every!r}: the number must divide {limits[unit]} ({'minutes' if unit == 'm' else 'hours'}"
            " per cycle); e.g. 5m, 15m, 30m, 1h, 6h, 1d"
        )
    if unit == "m":
        return "* * * * *" if n == 1 else f"*/{n} * * * *"
    if unit == "h":
        return "0 * * * *" if n == 1 else f"0 */{n} * * *"
    return "0 0 * * *"


def job_name(settings: Settings) -> str:
    return f"callvault-maintain {settings.qualified}"


def job_command(settings: Settings) -> str:
    return (
        sql.SQL("CALL {}.run_maintenance({})")
        .format(sql.Identifier(META_SCHEMA), sql.Literal(settings.qualified))
        .as_string()
    )


def _cron_settings(conn: Conn, settings: Settings) -> tuple[Settings, str]:
    row = conn.execute("SELECT current_setting('cron.database_name', true), current_database()").fetchone()
    if row is None or not row[0]:
        raise ExtensionMissing(PG_CRON_HINT)
    cron_db, here = row
    dsn = conn.info.dsn if settings.dsn is None else settings.dsn
    params = conninfo.conninfo_to_dict(dsn)
    if not params.get("password") and conn.info.password:
        params["password"] = conn.info.password
    params["dbname"] = cron_db
    return settings.with_(dsn=conninfo.make_conninfo("", **params)), here


def schedule(settings: Settings, every: str = DEFAULT_EVERY, remove: bool = False) -> str:
    """Install (or remove) the pg_cron job; returns a one-line description."""
    expr = cron_expression(every) if not remove else ""
    with connect(settings, autocommit=True) as conn:
        cron_settings, database = _cron_settings(conn, settings)
    with connect(cron_settings, autocommit=True) as cron:
        cron.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
        name = job_name(settings)
        if remove:
            rows = cron.execute(
                "SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname = %s AND database = %s",
                (name, database),
            ).fetchall()
            return f"removed {len(rows)} pg_cron job(s) named {name!r}"
        cron.execute("SELECT cron.schedule_in_database(%s, %s, %s, %s)", (name, expr, job_command(settings), database))
        return f"pg_cron job {name!r} runs `{job_command(settings)}` in database {database} at '{expr}'"
