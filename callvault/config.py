"""Settings: where the database is, which table, and its lifecycle.

One loader, :func:`load`, used by the CLI, the worker and the library alike. Each setting is resolved
in this order: explicit arguments (CLI flags, keyword arguments) > environment (``CALLVAULT_*``) >
a ``callvault.toml`` file (``$CALLVAULT_CONFIG``, else ``./callvault.toml`` when it exists) > defaults.
libpq's own environment (``PGHOST``, ``PGSERVICE``, ...) counts as a configured server, as for every
Postgres tool. With no server configured anywhere, the CLI uses the embedded private Postgres (see
:mod:`callvault.embedded`); library code never starts one implicitly: it raises an error naming
``CALLVAULT_DSN`` (``Settings(embedded=True)`` asks for the embedded cluster explicitly).
``callvault config show`` prints every effective setting and where it came from.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

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
        """The four roles named ``<prefix>_owner``, ``<prefix>_ingest``, ``<prefix>_app`` and
        ``<prefix>_tenant_writer``.

        :raises InvalidSetting: an empty prefix, or one that makes a name Postgres would refuse or
            truncate (see :func:`check_identifier`) or that starts with ``pg_``.
        """
        if not prefix:
            raise InvalidSetting("role prefix must not be empty; e.g. --role-prefix callvault")
        return cls(**{kind: prefix + suffix for kind, suffix in ROLE_SUFFIXES.items()})

    def as_dict(self) -> dict[str, str]:
        """``{"owner": ..., "ingest": ..., "app": ..., "tenant_writer": ...}``: kind to role name."""
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
    archive_url: str | None = None  # the archive store (s3://bucket/prefix or file:///dir)
    spool: str | None = None  # the archive's local work directory
    embedded: bool = False  # dsn None means the embedded cluster (the CLI's default), not "unset"
    start_embedded: bool = True  # False: commands that change nothing never start the embedded cluster

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
        """A copy with the given fields changed (validated again), e.g.
        ``settings.with_(start_embedded=False)``."""
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


@dataclass(frozen=True)
class Option:
    """One setting the loader resolves: its key (also the ``callvault.toml`` key), variable and default."""

    key: str
    env: str
    kind: type
    default: object
    help: str
    secret: bool = False


OPTIONS: tuple[Option, ...] = (
    Option("dsn", "CALLVAULT_DSN", str, None, "Postgres URL or key=value DSN", secret=True),
    Option("schema", "CALLVAULT_SCHEMA", str, "public", "schema of the table"),
    Option("table", "CALLVAULT_TABLE", str, "call_logs", "partitioned table"),
    Option("lock_timeout_ms", "CALLVAULT_LOCK_TIMEOUT_MS", int, DEFAULT_LOCK_TIMEOUT_MS, "DDL lock budget (ms)"),
    Option("partition_warn", "CALLVAULT_PARTITION_WARN", int, DEFAULT_PARTITION_WARN, "health warns above"),
    Option("role_prefix", "CALLVAULT_ROLE_PREFIX", str, DEFAULT_ROLE_PREFIX, "roles are <prefix>_owner, ..."),
    Option("owner_role", "CALLVAULT_OWNER_ROLE", str, None, "owner role (default <prefix>_owner)"),
    Option("ingest_role", "CALLVAULT_INGEST_ROLE", str, None, "ingest role (default <prefix>_ingest)"),
    Option("app_role", "CALLVAULT_APP_ROLE", str, None, "app role (default <prefix>_app)"),
    Option("tenant_writer_role", "CALLVAULT_TENANT_WRITER_ROLE", str, None, "tenant writer role"),
    Option("archive_url", "CALLVAULT_ARCHIVE_URL", str, None, "archive store URL"),
    Option("spool", "CALLVAULT_ARCHIVE_SPOOL", str, None, "archive spool directory"),
)
OPTION_KEYS = {o.key: o for o in OPTIONS}

# Process-level knobs: not a table's settings (no flag, no callvault.toml key), read from the
# environment here and nowhere else, each when it is used (tests and operators change them at run time).
KNOBS: dict[str, str] = {
    "CALLVAULT_HOME": "where the embedded cluster lives (default /var/lib/callvault as root, else "
    "$XDG_DATA_HOME/callvault)",
    "XDG_DATA_HOME": "the user's data directory (default ~/.local/share)",
    "CALLVAULT_PG_BIN": "the directory holding initdb and pg_ctl (default pg_config's, then Debian's)",
    "CALLVAULT_PG_USER": "the OS account the embedded server runs as when callvault runs as root",
    "CALLVAULT_HISTORY_DAYS": "days of job history kept (default 90)",
    "CALLVAULT_SLOT_WAL_LIMIT_MB": "WAL a callvault replication slot may retain before health fails (1024)",
    "CALLVAULT_FAULT_AFTER": "test hook: the archive SIGKILLs itself right after this step",
}


def redact(dsn: str) -> str:
    """The DSN with any password masked, safe to print in an error."""
    dsn = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", dsn)


def describe_dsn(dsn: str) -> str:
    """The DSN as ``key=value`` words without its password, for messages."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        info = conninfo_to_dict(dsn)
    except ProgrammingError:
        return "<unparsable DSN>"
    info.pop("password", None)
    info.pop("sslpassword", None)
    return " ".join(f"{k}={v}" for k, v in info.items())


def conninfo_without_secrets(dsn: str) -> str:
    """The DSN as a connection string without its password (what the primary records of a target)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    info = conninfo_to_dict(dsn)
    info.pop("password", None)
    info.pop("sslpassword", None)
    return make_conninfo(**{k: str(v) for k, v in info.items()})


def default_home() -> Path:
    """Where the embedded cluster lives: ``$CALLVAULT_HOME``, else ``/var/lib/callvault`` for root, else
    ``$XDG_DATA_HOME/callvault`` (default ``~/.local/share/callvault``)."""
    home = knob("CALLVAULT_HOME")
    if home:
        return Path(home)
    if os.geteuid() == 0:
        return Path("/var/lib/callvault")
    return Path(knob("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")) / "callvault"


def knob(name: str) -> str | None:
    """The value of the process-level knob ``name`` (one of :data:`KNOBS`), None when unset or empty."""
    if name not in KNOBS:
        raise KeyError(f"{name} is not a callvault knob: add it to config.KNOBS")
    return os.environ.get(name) or None


def process_environment() -> dict[str, str]:
    """A copy of this process's environment, for the servers and tools callvault starts."""
    return dict(os.environ)


CONFIG_ENV = "CALLVAULT_CONFIG"
CONFIG_FILE = "callvault.toml"
# libpq reads these itself: any of them means "a server is configured", as for psql or pg_dump.
LIBPQ_ENV = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE")


@dataclass(frozen=True)
class Loaded:
    """The effective settings and, for each, where its value came from."""

    settings: Settings
    values: dict[str, object]
    sources: dict[str, str]
    file: str | None

    def to_dict(self) -> dict[str, object]:
        """``{setting: {"value", "source", "env"}}`` for every setting, plus ``server`` (dsn, libpq
        environment, embedded or none) and ``config_file``; passwords redacted."""
        out: dict[str, object] = {}
        for o in OPTIONS:
            value = self.values.get(o.key)
            if o.secret and isinstance(value, str):
                value = redact(value)
            out[o.key] = {"value": value, "source": self.sources[o.key], "env": o.env}
        if self.values.get("archive_url") is None and self.server == "embedded":
            default = (default_home() / "archive").resolve().as_uri()
            out["archive_url"] = {"value": default, "source": "default (the embedded cluster's home)",
                                  "env": "CALLVAULT_ARCHIVE_URL"}  # fmt: skip
        out["server"] = {"value": self.server, "source": self.sources["dsn"]}
        out["config_file"] = {"value": self.file, "source": f"env {CONFIG_ENV} or --config or ./{CONFIG_FILE}"}
        return out

    @property
    def server(self) -> str:
        """Where the database comes from: ``dsn``, ``libpq environment`` (``PGHOST``, ...),
        ``embedded`` (the CLI's default) or ``none`` (connecting will raise an error naming
        ``CALLVAULT_DSN``)."""
        if self.settings.dsn is not None:
            return "libpq environment" if self.settings.dsn == "" else "dsn"
        return "embedded" if self.settings.embedded else "none"


def _read_file(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise InvalidSetting(f"config file {path} does not exist: create it or unset {CONFIG_ENV}") from None
    except OSError as exc:
        raise InvalidSetting(f"config file {path} cannot be read ({exc.strerror}): fix its permissions") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidSetting(f"config file {path} is not valid TOML: {exc}; fix that line") from None
    unknown = sorted(set(doc) - set(OPTION_KEYS))
    if unknown:
        raise InvalidSetting(
            f"config file {path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(OPTION_KEYS)}"
        )
    return doc


def _coerce(o: Option, value: object, where: str) -> object:
    if o.kind is int:
        if isinstance(value, bool):
            raise InvalidSetting(f"{where}: {o.key} must be an integer, not {value!r}")
        if isinstance(value, int):
            return value
        try:
            return int(str(value).strip())
        except ValueError:
            raise InvalidSetting(f"{where}: {o.key}={value!r} is not an integer") from None
    if not isinstance(value, str):
        raise InvalidSetting(f"{where}: {o.key} must be a string, not {value!r}")
    return value


def load(
    flags: Mapping[str, object] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
    embedded_default: bool = False,
    **extra: object,
) -> Loaded:
    """Resolve every setting: ``flags`` (non-None values) > ``environ`` (default ``os.environ``) >
    the config file > defaults. ``embedded_default``: with no server configured anywhere, use the
    embedded cluster (the CLI) instead of failing on first connect (the library). ``extra`` are
    Settings fields the loader does not resolve (lifecycle, default_partition, start_embedded).

    :param flags: setting key (``dsn``, ``schema``, ``table``, ``lock_timeout_ms``, ...: the keys of
        :data:`OPTIONS`) to value; ``None`` values count as not given.
    :param environ: the environment to read ``CALLVAULT_*`` and libpq's ``PG*`` variables from.
    :param config_file: the ``callvault.toml`` to read; default ``$CALLVAULT_CONFIG``, else
        ``./callvault.toml`` when it exists, else none.
    :return: the :class:`Settings` and, per setting, its value and source (what ``callvault config
        show`` prints).
    :raises InvalidSetting: an unknown key in ``flags`` or the file, a config file that is missing,
        unreadable or not TOML, a value of the wrong type, or a setting :class:`Settings` refuses
        (CLI exit code 2).

    Example:

        loaded = load({"table": "calls"}, environ={"CALLVAULT_DSN": "postgresql://app@db/calls"})
        loaded.settings.qualified      # 'public.calls'
        loaded.sources["dsn"]          # 'env CALLVAULT_DSN'
    """
    env = os.environ if environ is None else environ
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    unknown = sorted(set(given) - set(OPTION_KEYS))
    if unknown:
        raise InvalidSetting(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(OPTION_KEYS)}")
    path: Path | None = None
    if config_file is not None:
        path = Path(config_file)
    elif env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV])
    elif Path(CONFIG_FILE).is_file():
        path = Path(CONFIG_FILE).resolve()
    doc = _read_file(path) if path is not None else {}
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    for o in OPTIONS:
        if o.key in given:
            values[o.key], sources[o.key] = _coerce(o, given[o.key], "argument"), "flag"
        elif env.get(o.env):
            values[o.key], sources[o.key] = _coerce(o, env[o.env], f"environment {o.env}"), f"env {o.env}"
        elif o.key in doc:
            values[o.key], sources[o.key] = _coerce(o, doc[o.key], f"config file {path}"), f"file {path}"
        else:
            values[o.key], sources[o.key] = o.default, "default"
    embedded_default = embedded_default or bool(extra.pop("embedded", False))  # Settings(embedded=True) wording
    embedded = False
    if values["dsn"] is None:
        libpq = [v for v in LIBPQ_ENV if env.get(v)]
        if libpq:
            values["dsn"], sources["dsn"] = "", f"libpq environment ({', '.join(libpq)})"
        elif embedded_default:
            embedded, sources["dsn"] = True, "default (the embedded Postgres)"
    prefix = str(values["role_prefix"])
    names = Roles.with_prefix(prefix).as_dict()
    for kind in names:
        if values.get(f"{kind}_role"):
            names[kind] = str(values[f"{kind}_role"])
    settings = Settings(
        dsn=values["dsn"],  # type: ignore[arg-type]
        schema=str(values["schema"]),
        table=str(values["table"]),
        lock_timeout_ms=int(str(values["lock_timeout_ms"])),
        partition_warn=int(str(values["partition_warn"])),
        roles=Roles(**names),
        archive_url=values["archive_url"],  # type: ignore[arg-type]
        spool=values["spool"],  # type: ignore[arg-type]
        embedded=embedded,
        **extra,  # type: ignore[arg-type]
    )
    return Loaded(settings=settings, values=values, sources=sources, file=str(path) if path else None)


def from_env(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Settings from the one loader (:func:`load`), with non-None keyword overrides as flags.

    Overrides named like a setting (``dsn``, ``table``, ...) win over the environment and the config
    file; other :class:`Settings` fields (``lifecycle``, ``roles``, ``default_partition``,
    ``start_embedded``) are set as given. With no server configured the settings have no DSN and
    connecting raises an error naming ``CALLVAULT_DSN`` (``from_env().with_(embedded=True)`` asks for
    the embedded cluster).

    :raises InvalidSetting: as :func:`load`.

    Example:

        settings = from_env(dsn="postgresql://owner@db/calls", lifecycle=lifecycle_from("daily", 7, "30 days"))
    """
    flags = {k: v for k, v in overrides.items() if k in OPTION_KEYS}
    extra = {k: v for k, v in overrides.items() if k not in OPTION_KEYS and v is not None}
    roles = extra.pop("roles", None)
    settings = load(flags, environ=environ, **extra).settings  # type: ignore[arg-type]
    return settings.with_(roles=roles) if roles is not None else settings


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
