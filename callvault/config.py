"""Settings: where the database is, which table, and its lifecycle.

Resolved in this order: explicit arguments (CLI flags) > environment (``CALLVAULT_*``) > defaults.
With no DSN anywhere, callvault uses the embedded private Postgres (see :mod:`callvault.embedded`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from callvault.errors import InvalidSetting
from callvault.plan import Interval, LifecycleConfig, Retention

# pg_partman appends a suffix such as "_p2026_05_04" (12 bytes) or "_default" to the table name,
# and callvault names constraints "<table>_call_uq"; Postgres silently truncates identifiers past
# 63 bytes, which would make names collide. 48 bytes leaves room for every suffix.
MAX_TABLE_NAME_BYTES = 48
MAX_IDENTIFIER_BYTES = 63

# Lock budget for DDL (partition create/detach): ingest must never stall longer than this.
DEFAULT_LOCK_TIMEOUT_MS = 3_000
# Partition counts past ~10k make planning slow (seed guidance); warn well before that.
DEFAULT_PARTITION_WARN = 8_000

DEFAULT_RETENTION = Retention(months=0, days=90)
DEFAULT_ROLE_PREFIX = "callvault"
ROLE_SUFFIXES = {"owner": "_owner", "ingest": "_ingest", "app": "_app", "tenant_writer": "_tenant_writer"}
META_SCHEMA = "callvault"  # callvault's own bookkeeping tables (maintenance log, ...)


def check_identifier(value: str, what: str, max_bytes: int = MAX_IDENTIFIER_BYTES, *, partman: bool = True) -> str:
    """Refuse names Postgres or pg_partman would mangle; everything else is quoted, never pasted.

    callvault composes every identifier with ``psycopg.sql``, but a name also passes through
    pg_partman, which pastes quoted names inside string literals (``show_partitions``: ``WHERE
    h.inhparent = ''%I.%I''::regclass`` in 4.7 and 5.x): a single quote there breaks every
    maintenance run. So are refused: ``'``, ``.`` (pg_partman splits on it), control characters
    (they end up in log lines and job names), NUL, and names Postgres would truncate. Role names
    (``partman=False``) never reach pg_partman and may hold quotes."""
    if not value:
        raise InvalidSetting(f"{what} must not be empty")
    if "\x00" in value:
        raise InvalidSetting(f"{what} {value!r} contains a NUL byte; choose another name")
    if partman and "'" in value:
        raise InvalidSetting(
            f"{what} {value!r} contains a single quote: pg_partman pastes names inside SQL string literals, so "
            "maintenance would fail on it. Choose a name without quotes (letters, digits and _ are safest)"
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidSetting(f"{what} {value!r} contains a control character (newline, tab...); choose another name")
    if "." in value:
        # pg_partman splits "schema.table" on the first dot, so a dot inside a name breaks it.
        raise InvalidSetting(f"{what} {value!r} contains '.'; pass schema and table separately")
    if len(value.encode()) > max_bytes:
        raise InvalidSetting(
            f"{what} {value!r} is {len(value.encode())} bytes; the limit is {max_bytes} bytes "
            "(Postgres truncates longer names). Choose a shorter name."
        )
    return value


@dataclass(frozen=True)
class Roles:
    """The four roles ``callvault init --roles`` creates (see docs/tenancy.md for what each may do).

    * ``owner``: owns the table and every partition; DDL, maintenance, archive, restore. BYPASSRLS
      (it must read every tenant's rows to archive them); never used by the application.
    * ``ingest``: the trusted batching writer. BYPASSRLS because Postgres refuses ``COPY FROM`` to any
      role row-level security applies to; INSERT only, so it cannot read a transcript.
    * ``app``: tenant-scoped reads; SELECT on the parent only, subject to the tenant policy.
    * ``tenant_writer``: untrusted, tenant-scoped writes (stage + ``INSERT ... SELECT`` through the
      parent, so the policy's WITH CHECK refuses another tenant's rows); INSERT on the parent only.
    """

    owner: str = DEFAULT_ROLE_PREFIX + ROLE_SUFFIXES["owner"]
    ingest: str = DEFAULT_ROLE_PREFIX + ROLE_SUFFIXES["ingest"]
    app: str = DEFAULT_ROLE_PREFIX + ROLE_SUFFIXES["app"]
    tenant_writer: str = DEFAULT_ROLE_PREFIX + ROLE_SUFFIXES["tenant_writer"]

    def __post_init__(self) -> None:
        names = self.as_dict()
        for kind, name in names.items():
            check_identifier(name, f"{kind} role name", partman=False)
            if name.lower().startswith("pg_"):
                raise InvalidSetting(f"{kind} role name {name!r} starts with 'pg_', which Postgres reserves")
        if len(set(names.values())) != len(names):
            raise InvalidSetting(f"role names must be four different roles, got {names}")

    @classmethod
    def with_prefix(cls, prefix: str) -> Roles:
        if not prefix:
            raise InvalidSetting("role prefix must not be empty; e.g. --role-prefix callvault")
        return cls(**{kind: prefix + suffix for kind, suffix in ROLE_SUFFIXES.items()})

    def as_dict(self) -> dict[str, str]:
        return {"owner": self.owner, "ingest": self.ingest, "app": self.app, "tenant_writer": self.tenant_writer}

    @property
    def application(self) -> tuple[str, str]:
        """Roles that must stay subject to the tenant policy."""
        return (self.app, self.tenant_writer)


@dataclass(frozen=True)
class Settings:
    """Everything callvault needs to know about one managed table."""

    dsn: str | None = None
    schema: str = "public"
    table: str = "call_logs"
    partman_schema: str = "partman"
    lifecycle: LifecycleConfig = field(default_factory=lambda: LifecycleConfig(retention=DEFAULT_RETENTION))
    default_partition: bool = False
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS
    partition_warn: int = DEFAULT_PARTITION_WARN
    roles: Roles = field(default_factory=Roles)

    def __post_init__(self) -> None:
        check_identifier(self.schema, "schema")
        if self.schema.startswith("pg_"):
            raise InvalidSetting(
                f"schema {self.schema!r} starts with 'pg_', which Postgres reserves for system schemas; choose "
                "another schema name"
            )
        check_identifier(self.table, "table", MAX_TABLE_NAME_BYTES)
        check_identifier(self.partman_schema, "pg_partman schema")
        if self.lock_timeout_ms <= 0:
            raise InvalidSetting(f"lock timeout {self.lock_timeout_ms} ms must be positive")

    @property
    def qualified(self) -> str:
        """``schema.table`` as pg_partman wants it (its own functions quote the parts)."""
        return f"{self.schema}.{self.table}"

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]


def lifecycle_from(
    interval: str | None = None, premake: int | None = None, retention: str | None = None
) -> LifecycleConfig:
    """Build a lifecycle config from user strings; ``retention='none'`` keeps data forever."""
    base = LifecycleConfig(retention=DEFAULT_RETENTION)
    ret: Retention | None = base.retention
    if retention is not None:
        ret = None if retention.strip().lower() in {"none", "forever", "off"} else Retention.parse(retention)
    return LifecycleConfig(
        interval=Interval.parse(interval) if interval else base.interval,
        premake=base.premake if premake is None else premake,
        retention=ret,
    )


def from_env(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Settings from ``CALLVAULT_*`` variables, with non-None keyword overrides on top."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for key, var in (("dsn", "CALLVAULT_DSN"), ("schema", "CALLVAULT_SCHEMA"), ("table", "CALLVAULT_TABLE")):
        if env.get(var):
            values[key] = env[var]
    if env.get("CALLVAULT_LOCK_TIMEOUT_MS"):
        values["lock_timeout_ms"] = _int(env["CALLVAULT_LOCK_TIMEOUT_MS"], "CALLVAULT_LOCK_TIMEOUT_MS")
    values["roles"] = roles_from_env(env)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**values)  # type: ignore[arg-type]


def roles_from_env(env: Mapping[str, str], prefix: str | None = None) -> Roles:
    """``CALLVAULT_ROLE_PREFIX`` (default ``callvault``) names all four roles; ``CALLVAULT_<KIND>_ROLE``
    (OWNER, INGEST, APP, TENANT_WRITER) overrides one. ``prefix`` (the CLI's --role-prefix) wins."""
    base = Roles.with_prefix(prefix if prefix is not None else env.get("CALLVAULT_ROLE_PREFIX", DEFAULT_ROLE_PREFIX))
    names = base.as_dict()
    for kind in names:
        value = env.get(f"CALLVAULT_{kind.upper()}_ROLE")
        if value:
            names[kind] = value
    return Roles(**names)


def _int(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidSetting(f"{name}={text!r} is not an integer") from None
