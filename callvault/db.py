"""Connections: the configured DSN, or the embedded default when none is configured."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import psycopg

from callvault.config import Settings
from callvault.errors import DatabaseUnavailable, InvalidSetting

CONNECT_TIMEOUT_S = 10

Conn = psycopg.Connection[Any]


def redact(dsn: str) -> str:
    """The DSN with any password masked, safe to print in an error."""
    dsn = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", dsn)


def resolve_dsn(settings: Settings) -> str:
    if settings.dsn:
        return settings.dsn
    from callvault.embedded import default_dsn  # only start a private cluster when it is needed

    return default_dsn()


def connect(settings: Settings, *, autocommit: bool = False, prepare_threshold: int | None = None) -> Conn:
    """Open a connection with the session time zone pinned to UTC (all partition math is UTC).

    ``prepare_threshold=None``: psycopg never prepares a statement server-side on it. A prepared
    statement lives on one server connection, which PgBouncer (1.18, transaction mode) does not keep
    for the next transaction; pass psycopg's 5 to get its default back when talking to Postgres directly.
    """
    dsn = resolve_dsn(settings)
    try:
        conn = psycopg.connect(
            dsn, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_S, prepare_threshold=prepare_threshold
        )
    except psycopg.ProgrammingError as exc:  # the DSN itself does not parse
        raise InvalidSetting(
            f"invalid DSN {redact(dsn)!r}: {str(exc).strip()}. Use a URL such as postgresql://user:pass@host:5432/db "
            "(or key=value pairs) in --dsn / CALLVAULT_DSN, or unset both to use the embedded Postgres"
        ) from None
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DatabaseUnavailable(
            f"cannot connect to {redact(dsn)}: {reason}. Check host, port and credentials of --dsn / "
            "CALLVAULT_DSN, or unset both to use the embedded Postgres"
        ) from exc
    conn.execute("SET timezone TO 'UTC'")
    # callvault's own commands (maintain, archive, restore, status) must see every row or fail:
    # with row_security off, a role that row-level security would filter gets an error instead of
    # a silently partial view (an archive of nothing, a count of zero).
    conn.execute("SET row_security TO off")
    if not autocommit:
        conn.commit()
    return conn


def server_now(conn: Conn) -> datetime:
    """The database server's clock: the one "now" every lifecycle decision uses.

    pg_partman decides with the server's ``CURRENT_TIMESTAMP``; callvault plans, reports and archives
    with the same clock, so a client whose clock drifts (or a test that fakes the server's clock with
    libfaketime, see docs/design.md) never disagrees with the maintenance it predicts.
    """
    row = conn.execute("SELECT statement_timestamp()").fetchone()
    assert row is not None
    return row[0].astimezone(UTC)  # type: ignore[no-any-return]
