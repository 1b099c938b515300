"""Connections: the configured DSN, or the embedded default when none is configured."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg

from callvault.config import Settings, redact
from callvault.errors import AuthenticationFailed, DatabaseUnavailable, EmbeddedError, InvalidSetting, NotPrimary

CONNECT_TIMEOUT_S = 10

Conn = psycopg.Connection[Any]


def resolve_dsn(settings: Settings) -> str:
    """The DSN to connect with. ``""`` is libpq's own environment (PGHOST, PGSERVICE, ...). With no
    DSN, the embedded cluster only when ``settings.embedded`` (the CLI's default; never implicit in
    library code), started only when ``settings.start_embedded``."""
    if settings.dsn is not None:
        return settings.dsn
    if not settings.embedded:
        raise InvalidSetting(
            "no database configured: set CALLVAULT_DSN (or libpq's PGHOST/PGSERVICE), pass dsn=... / --dsn, or ask "
            "for the embedded Postgres explicitly with Settings(embedded=True) (the CLI's default)"
        )
    from callvault.embedded import Cluster  # only start a private cluster when it is needed

    cluster = Cluster()
    if not settings.start_embedded:
        if not cluster.status().running:
            raise EmbeddedError(
                f"the embedded Postgres at {cluster.home} is not running, and this command changes nothing, so it "
                "does not start it: run `callvault dev up` first, or pass --dsn"
            )
        return cluster.dsn()
    return cluster.up()


def open_conn(dsn: str, **kwargs: Any) -> Conn:
    """``psycopg.connect`` within ``CONNECT_TIMEOUT_S``; failures become one callvault error carrying
    the server's message (AuthenticationFailed, DatabaseUnavailable, InvalidSetting for a bad DSN)."""
    try:
        conn = psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_S, **kwargs)
    except psycopg.ProgrammingError as exc:  # the DSN itself does not parse
        raise InvalidSetting(
            f"invalid DSN {redact(dsn)!r}: {str(exc).strip()}. Use a URL such as postgresql://user:pass@host:5432/db "
            "(or key=value pairs) in --dsn / CALLVAULT_DSN, or unset both to use the embedded Postgres"
        ) from None
    except psycopg.OperationalError as exc:
        reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
        reason = reason.rstrip(".")
        if "authentication failed" in reason or "no password supplied" in reason or exc.sqlstate in ("28P01", "28000"):
            raise AuthenticationFailed(
                f"authentication failed connecting to {redact(dsn)}: {reason}. Fix the user/password in --dsn / "
                "CALLVAULT_DSN (or ~/.pgpass)"
            ) from exc
        raise DatabaseUnavailable(
            f"cannot connect to {redact(dsn)}: {reason}. Check host, port and credentials of --dsn / "
            "CALLVAULT_DSN, or unset both to use the embedded Postgres"
        ) from exc
    return conn


def probe(dsn: str) -> None:
    """Connect once and close: a pool would retry a wrong password or a closed port until its timeout
    and hide the server's message; this says it at once."""
    open_conn(dsn).close()


def connect(settings: Settings, *, autocommit: bool = False, prepare_threshold: int | None = None) -> Conn:
    """Open a connection with the session time zone pinned to UTC (all partition math is UTC).

    ``prepare_threshold=None``: psycopg never prepares a statement server-side on it. A prepared
    statement lives on one server connection, which PgBouncer (1.18, transaction mode) does not keep
    for the next transaction; pass psycopg's 5 to get its default back when talking to Postgres directly.
    """
    conn = open_conn(resolve_dsn(settings), autocommit=autocommit, prepare_threshold=prepare_threshold)
    conn.execute("SET timezone TO 'UTC'")
    # callvault's own commands (maintain, archive, restore, status) must see every row or fail:
    # with row_security off, a role that row-level security would filter gets an error instead of
    # a silently partial view (an archive of nothing, a count of zero).
    conn.execute("SET row_security TO off")
    if not autocommit:
        conn.commit()
    return conn


def require_primary(conn: Conn, dsn: str, what: str) -> None:
    """Refuse a standby: ``what`` (the worker, maintenance) writes, and must never run on a server in
    recovery. :class:`NotPrimary` names the DSN (password hidden) and the fix."""
    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    if row is not None and row[0]:
        host = conn.info.host or "?"
        raise NotPrimary(
            f"{redact(dsn)} reaches a standby ({host}:{conn.info.port} is in recovery): {what} must run on the "
            "primary. Give the primary's DSN, or every node with target_session_attrs=read-write "
            "(`callvault dev url --ha` shows one)"
        )


def server_now(conn: Conn) -> datetime:
    """The database server's clock: the one "now" every lifecycle decision uses.

    pg_partman decides with the server's ``CURRENT_TIMESTAMP``; callvault plans, reports and archives
    with the same clock, so a client whose clock drifts (or a test that fakes the server's clock with
    libfaketime, see docs/design.md) never disagrees with the maintenance it predicts.
    """
    row = conn.execute("SELECT statement_timestamp()").fetchone()
    assert row is not None
    return row[0].astimezone(UTC)  # type: ignore[no-any-return]
