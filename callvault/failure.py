"""Anything that reaches the CLI from psycopg, psycopg_pool, boto3, DuckDB or the OS, as one
callvault error: the cause, what to do, and a distinct exit code. A traceback only with ``--debug``.

Exit codes (also in docs/cli.md): 1 other database error, 2 bad input, 3 unhealthy, 65 data does not
match, 66 not initialised (undefined table: run ``init``), 69 unavailable (server, database, store),
70 internal error (a bug: run with ``--debug`` and report it), 71 out of disk or memory on the server,
74 local I/O error, 75 try again later (locks, another run), 77 authentication or privilege, 130
interrupted.
"""

from __future__ import annotations

from callvault.errors import (
    AuthenticationFailed,
    Blocked,
    CallvaultError,
    DatabaseUnavailable,
    InvalidSetting,
    NotInitialised,
    PermissionDenied,
    StoreUnavailable,
)

OWNER_COMMANDS = "init, maintain, archive, restore, status, health, plan, audit"


def _error(cls: type[CallvaultError], message: str, code: int | None = None) -> CallvaultError:
    exc = cls(message)
    if code is not None:
        exc.exit_code = code
    return exc


def translate(exc: BaseException) -> CallvaultError:
    """The one-line callvault error for ``exc`` (which is not a CallvaultError)."""
    import psycopg

    if isinstance(exc, KeyboardInterrupt):
        return _error(CallvaultError, "interrupted", 130)
    if isinstance(exc, psycopg.Error):
        return _psycopg(exc)
    try:
        from psycopg_pool import PoolTimeout

        if isinstance(exc, PoolTimeout):
            return DatabaseUnavailable(f"no database connection within the pool timeout ({exc}): check the DSN")
    except ImportError:  # pragma: no cover
        pass
    mod = type(exc).__module__
    if mod.startswith(("botocore", "boto3", "s3transfer")):
        return StoreUnavailable(
            f"S3: {exc}. Check the bucket, AWS credentials, region and AWS_ENDPOINT_URL; nothing was dropped"
        )
    if mod.startswith("duckdb"):
        return _error(CallvaultError, f"DuckDB: {str(exc).strip().splitlines()[0]}; check the SQL and the store", 65)
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        return _error(CallvaultError, f"file{where}: {exc.strerror or exc}; check the path and its permissions", 74)
    return _error(
        CallvaultError,
        f"internal error: {type(exc).__name__}: {exc}. This is a callvault bug: run again with --debug for the "
        "traceback and report it",
        70,
    )


def _psycopg(exc: BaseException) -> CallvaultError:
    import psycopg

    assert isinstance(exc, psycopg.Error)
    state = exc.sqlstate or ""
    msg = (exc.diag.message_primary or str(exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if state.startswith("28"):
        return AuthenticationFailed(f"authentication failed: {msg}. Fix the user/password in --dsn / CALLVAULT_DSN")
    if state == "42501":
        return PermissionDenied(
            f"permission denied: {msg}. Run {OWNER_COMMANDS} as the table's owner role (e.g. callvault_owner) or a "
            "superuser; the app and ingest roles may only read and write rows"
        )
    if state == "3D000":
        return DatabaseUnavailable(f"{msg}: create it (createdb) or fix the database name in --dsn / CALLVAULT_DSN")
    if state == "42P01":
        return NotInitialised(f"{msg}: run `callvault init` for this database first")
    if state == "42883" and "partman" in msg:
        return NotInitialised(f"{msg}: pg_partman is missing or outdated here; run `callvault init` to repair it")
    if state.startswith("08") or (isinstance(exc, psycopg.OperationalError) and not state):
        return DatabaseUnavailable(f"database connection failed: {msg}. Check the server is up; then run again")
    if state in ("55P03", "57014", "40001", "40P01"):
        return Blocked(f"{msg}: another session held a lock or conflicted; run again (the lock budget is "
                       "CALLVAULT_LOCK_TIMEOUT_MS)")  # fmt: skip
    if state.startswith("53"):
        return _error(CallvaultError, f"the database server is out of resources: {msg}; free disk or memory", 71)
    if state.startswith("22") or state.startswith("42"):
        return InvalidSetting(f"the database refused the input: {msg} (SQLSTATE {state})")
    return _error(CallvaultError, f"database error: {msg} (SQLSTATE {state or 'none'})", 1)
