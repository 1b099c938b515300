"""``callvault schedule --pg-cron``: run maintenance inside Postgres every N minutes.

pg_cron lives in one database (``cron.database_name``); the job is created there with
``cron.schedule_in_database`` so it runs in the database that holds the table. The job calls
``callvault.run_maintenance(...)`` (created by ``init``), which pins UTC and logs the run.

pg_cron names are unique per user across *all* databases, so the job's name carries the database:
``callvault-maintain <database>:<schema.table>``. Scheduling the same table in another database makes
another job; ``--remove`` removes this database's job only. A job from before that naming (named
without the database) is replaced when it targets this database and left alone otherwise.
"""

from __future__ import annotations

import hashlib
import re

import psycopg
from psycopg import conninfo, sql

from callvault.config import META_SCHEMA, Settings
from callvault.db import Conn, connect
from callvault.errors import CallvaultError, ExtensionMissing, InvalidSetting, NotInitialised

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


JOB_PREFIX = "callvault-maintain "
# cron.job.jobname is a ``name``: Postgres keeps its first 63 bytes only, so two long names that share
# them would be one job. Longer names keep a readable head and end in a digest of the whole name.
JOBNAME_MAX_BYTES = 63
_DIGEST_CHARS = 12


def job_name(settings: Settings, database: str) -> str:
    """``callvault-maintain <database>:<schema.table>``, at most 63 bytes (a digest replaces the tail)."""
    full = f"{JOB_PREFIX}{database}:{settings.qualified}"
    raw = full.encode()
    if len(raw) <= JOBNAME_MAX_BYTES:
        return full
    digest = hashlib.sha256(raw).hexdigest()[:_DIGEST_CHARS]
    head = raw[: JOBNAME_MAX_BYTES - _DIGEST_CHARS - 1].decode(errors="ignore")  # never half a character
    return f"{head}~{digest}"


def legacy_job_name(settings: Settings) -> str:
    """The name callvault used before it named the database (one job per table across all databases)."""
    return f"{JOB_PREFIX}{settings.qualified}"


def job_command(settings: Settings) -> str:
    return (
        sql.SQL("CALL {}.run_maintenance({})")
        .format(sql.Identifier(META_SCHEMA), sql.Literal(settings.qualified))
        .as_string()
    )


def _grant_fix(user: str, cron_db: str) -> str:
    return (
        "run `callvault schedule --pg-cron` as a superuser, or have one grant it: `GRANT pg_read_all_settings TO "
        f"{user}`, and in pg_cron's database ({cron_db}) `GRANT USAGE ON SCHEMA cron TO {user}; GRANT EXECUTE ON "
        f"FUNCTION cron.schedule_in_database(text,text,text,text,text,boolean) TO {user}`"
    )


def _cron_settings(conn: Conn, settings: Settings) -> tuple[Settings, str]:
    try:
        row = conn.execute("SELECT current_setting('cron.database_name', true), current_database()").fetchone()
    except psycopg.errors.InsufficientPrivilege as exc:  # the setting is superuser-only
        raise CallvaultError(
            f"pg_cron job for {settings.qualified}: {conn.info.user} may not read cron.database_name "
            f"({exc.diag.message_primary}); {_grant_fix(conn.info.user, '<cron.database_name>')}"
        ) from None
    if row is None or not row[0]:
        raise ExtensionMissing(PG_CRON_HINT)
    cron_db, here = row
    dsn = conn.info.dsn if settings.dsn is None else settings.dsn
    params = conninfo.conninfo_to_dict(dsn)
    if not params.get("password") and conn.info.password:
        params["password"] = conn.info.password
    params["dbname"] = cron_db
    return settings.with_(dsn=conninfo.make_conninfo("", **params)), here


# Jobs of this table in this database under any other callvault name: the legacy name (maybe cut at
# 63 bytes by the ``name`` type). Matched by prefix, command and database, so another table's or
# another database's job never is.
_OTHER_NAMES_SQL = """
SELECT jobid FROM cron.job
WHERE database = %(db)s AND command = %(command)s AND jobname IS DISTINCT FROM %(name)s::name
  AND left(jobname, %(plen)s) = %(prefix)s
"""


def _require_initialised(conn: Conn, settings: Settings, database: str) -> None:
    """The job calls ``callvault.run_maintenance`` on a table pg_partman manages: both must exist, or
    every run would fail inside pg_cron where nobody reads the error."""
    from callvault.maintain import require_partman

    proc = conn.execute("SELECT to_regprocedure(%s)", (f"{META_SCHEMA}.run_maintenance(text)",)).fetchone()
    if proc is None or proc[0] is None:
        raise NotInitialised(
            f"database {database} has no {META_SCHEMA}.run_maintenance procedure for the pg_cron job to call: run "
            f"`callvault init` (same --dsn/--schema/--table) first, then schedule again"
        )
    require_partman(conn, settings)


def _cron_failure(exc: psycopg.Error, cron: Conn, settings: Settings, database: str) -> CallvaultError:
    """A pg_cron call that failed, as one line: which job, why, what to do."""
    reason = (exc.diag.message_primary or str(exc) or type(exc).__name__).strip().splitlines()[0]
    cron_db = cron.info.dbname
    job = f"pg_cron job for {settings.qualified} in database {database}"
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return CallvaultError(
            f"{job}: {reason} (as {cron.info.user} in pg_cron's database {cron_db}); scheduling into another "
            f"database is for superusers unless granted: {_grant_fix(cron.info.user, cron_db)}"
        )
    if isinstance(exc, psycopg.errors.UndefinedFunction):
        return ExtensionMissing(
            f"{job}: {reason}. callvault needs pg_cron 1.4 or later (cron.schedule_in_database): run `ALTER "
            f"EXTENSION pg_cron UPDATE` in database {cron_db}, or upgrade the pg_cron package first"
        )
    return CallvaultError(f"{job}: pg_cron refused it ({reason}); nothing was changed. Fix that, then run it again")


def schedule(settings: Settings, every: str = DEFAULT_EVERY, remove: bool = False) -> str:
    """Install (or remove) this database's pg_cron job for the table; returns a one-line description."""
    expr = cron_expression(every) if not remove else ""
    with connect(settings, autocommit=True) as conn:
        cron_settings, database = _cron_settings(conn, settings)
        if not remove:
            _require_initialised(conn, settings, database)
    with connect(cron_settings, autocommit=True) as cron:
        try:
            return _apply(cron, settings, database, expr, remove)
        except psycopg.Error as exc:
            raise _cron_failure(exc, cron, settings, database) from exc


def _apply(cron: Conn, settings: Settings, database: str, expr: str, remove: bool) -> str:
    name, command = job_name(settings, database), job_command(settings)
    # cron.job has row-level security (a non-superuser sees its own jobs): callvault's sessions turn it
    # off to fail rather than read partially, which here would refuse every non-superuser
    cron.execute("SET row_security TO on")
    with cron.transaction():
        cron.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
        params = {"db": database, "command": command, "name": name, "prefix": JOB_PREFIX, "plen": len(JOB_PREFIX)}
        legacy = [row[0] for row in cron.execute(_OTHER_NAMES_SQL, params).fetchall()]
        for jobid in legacy:
            cron.execute("SELECT cron.unschedule(%s::bigint)", (jobid,))
        if remove:
            rows = cron.execute(
                "SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname = %s AND database = %s", (name, database)
            ).fetchall()
            return f"removed {len(rows) + len(legacy)} pg_cron job(s) of {settings.qualified} in database {database}"
        cron.execute("SELECT cron.schedule_in_database(%s, %s, %s, %s)", (name, expr, command, database))
        replaced = f" (replaced {len(legacy)} job(s) named without the database)" if legacy else ""
        return f"pg_cron job {name!r} runs `{command}` in database {database} at '{expr}'{replaced}"
