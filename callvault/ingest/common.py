"""What both batching writers share: their defaults, how they connect, and the start-up checks they
run (the decisions are pure; :class:`~callvault.ingest.AsyncWriter` and its generated twin
:class:`~callvault.ingest.Writer` run the statements)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from callvault import catalog
from callvault.config import META_SCHEMA, Settings
from callvault.errors import NotInitialised, WriterError
from callvault.ingest.call import Call

# ~6 MB of 1.2 KB rows: amortises COPY start-up and the commit's WAL flush, while a batch still
# commits in well under 100 ms at COPY speed.
DEFAULT_BATCH_ROWS = 5_000
DEFAULT_FLUSH_INTERVAL = 0.2  # seconds a buffered row may wait before it is sent
DEFAULT_MAX_PENDING = 4  # sealed batches queued for the flusher before write() blocks
DEFAULT_RETRY_FOR = 60.0  # seconds a batch is re-sent after connection failures before giving up
RANGE_REFRESH_S = 30.0  # how stale the live partition range may get (maintenance runs every 15 min)
BACKOFF_START_S, BACKOFF_MAX_S = 0.1, 5.0
CONNECT_WAIT_S = 5.0  # per attempt, waiting for the pool to hand out a (re)connected connection

APPLICATION_NAME = "callvault-writer"  # visible in pg_stat_activity

# Bound every wait on the network, so retry_for really bounds a dead or half-open connection.
# prepare_threshold=None: no server-side prepared statements, which PgBouncer 1.18 in transaction mode
# would leave on a server connection the next transaction does not get ("_pg3_0" already exists).
CONNECT_KWARGS: dict[str, Any] = {
    "application_name": APPLICATION_NAME, "connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30,
    "keepalives_interval": 10, "keepalives_count": 3, "tcp_user_timeout": 60_000, "prepare_threshold": None,
}  # fmt: skip

CallLike = Call | Mapping[str, Any]


# The statements both writers run at start-up, in order; the decisions are shared (pure) code. The role
# check comes first: a role bound by row-level security may not even see callvault's schema.
READY_SQL = "SELECT row_security_active(to_regclass(%(parent)s)), current_user, to_regclass(%(parent)s) IS NOT NULL"
QUARANTINE_SQL = "SELECT to_regclass(%(quarantine)s) IS NOT NULL"


def ready_params(settings: Settings) -> dict[str, str]:
    return {"parent": catalog.parent_regclass(settings), "quarantine": f"{META_SCHEMA}.quarantine"}


def decide_role(row: tuple[Any, ...] | None, settings: Settings) -> None:
    """WriterError when row-level security binds the writer's role (Postgres refuses COPY for it)."""
    if row and row[0]:
        raise WriterError(
            f"role {row[1]} is subject to row-level security on {settings.qualified}, and Postgres refuses COPY for "
            f"such roles: connect the writer as the trusted ingest role ({settings.roles.ingest}, made by "
            "`callvault init --roles`), or write one tenant's calls with callvault.tenancy.TenantWriter"
        )


def decide_ready(row: tuple[Any, ...] | None, quarantine: tuple[Any, ...] | None, settings: Settings) -> None:
    """NotInitialised (exit 66) when the table or its quarantine is missing: at start-up, not at the
    first batch. Pure; both writers call it."""
    if row is None or not row[2] or quarantine is None or not quarantine[0]:
        raise NotInitialised(f"{settings.qualified} or its quarantine table is missing: run `callvault init` first")


def as_settings(target: Settings | str | None) -> Settings:
    if isinstance(target, Settings):
        return target
    from callvault.config import from_env

    return from_env(dsn=target)
