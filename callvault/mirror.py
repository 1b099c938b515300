"""``callvault mirror``: the table (or its metadata) mirrored into another Postgres by logical replication.

``mirror create --to DSN``:

1. on the primary, a publication via the partition root (:mod:`callvault.publication`; optional column
   list and tenant filter), named ``callvault_mirror_<name>``;
2. on the target, the same table *partitioned with its own callvault lifecycle* (``init`` there, with
   the tenant policy and the four roles when the target's user may create roles), plus, before anything
   is copied, a partition for every range the primary has, and a DEFAULT partition: a row for which the
   mirror has no partition (a late row for a week the mirror's own retention already dropped, or one
   past its horizon when its maintenance lags) lands there instead of stopping the apply worker —
   logical replication stalls on a row with no partition until someone intervenes. ``mirror status``
   reports rows in it;
3. a subscription on the target with the initial copy, and the replication slot on the primary, both
   named ``callvault_mirror_<name>``.

Why partitioned rather than a plain table: retention. The primary's DETACH/DROP is DDL and does not
replicate; a plain mirror keeps every row forever or needs DELETEs of whole weeks. A partitioned mirror
drops old weeks the way the primary does (its own pg_partman retention, ``retention_keep_table =
false``: the primary archives; the mirror only forgets). Its maintenance is the mirror's own: run
``callvault maintain --dsn <target>`` (cron, the worker) or ``callvault schedule --pg-cron`` there.

Sharp edges, and what callvault does: TRUNCATE of a single partition on the primary is not replicated
(callvault never truncates); erasure DELETEs and UPDATEs replicate (the primary key is the replica
identity) — for a week the mirror already dropped they are skipped by Postgres; an abandoned slot keeps
WAL on the primary until the disk fills: ``mirror status`` and ``health`` report WAL retained and slot
activity, ``mirror drop --force`` removes a slot whose subscriber is gone; the apply worker bypasses
row-level security on the target (it runs as the subscription's owner), so isolation there holds for
readers, as on the primary.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from callvault import bootstrap, catalog, partman
from callvault.config import Settings
from callvault.db import Conn, connect, resolve_dsn
from callvault.errors import CallvaultError, DatabaseUnavailable, InvalidSetting
from callvault.publication import PublicationSpec, parse_columns, parse_tenants, publish, require_logical

PREFIX = "callvault_mirror_"


def mirror_name(name: str | None, target_dsn: str) -> str:
    """``callvault_mirror_<name>``; default ``<target database>_<8 hex of the target>``. Lower-case
    letters, digits and ``_`` only (it names a slot, which allows nothing else)."""
    if name is None:
        info = conninfo_to_dict(target_dsn)
        db = re.sub(r"[^a-z0-9_]", "_", str(info.get("dbname") or "db").lower())[:20]
        name = f"{db}_{hashlib.sha256(target_dsn.encode()).hexdigest()[:8]}"
    if not re.fullmatch(r"[a-z0-9_]{1,40}", name):
        raise InvalidSetting(f"--name {name!r}: use 1 to 40 lower-case letters, digits or _ (it names a slot)")
    return PREFIX + name


def _connect_target(dsn: str) -> psycopg.Connection[tuple[Any, ...]]:
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10, prepare_threshold=None)
    except psycopg.OperationalError as exc:
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        reason = lines[0].split(" failed: ", 1)[-1] if lines else type(exc).__name__
        raise DatabaseUnavailable(
            f"mirror target {_safe(dsn)} cannot be reached: {reason}; check --to (host, port, database, password)"
        ) from exc
    conn.execute("SET timezone TO 'UTC'")
    return conn


def _safe(dsn: str) -> str:
    """The DSN without its password, for messages."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable DSN>"
    info.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in info.items())


def _identity(conn: Conn) -> tuple[int, str]:
    row = conn.execute("SELECT system_identifier, current_database() FROM pg_control_system()").fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


@dataclass
class MirrorReport:
    """What ``mirror create`` / ``mirror drop`` did."""

    name: str
    target: str
    columns: tuple[str, ...] = ()
    tenants: tuple[str, ...] = ()
    steps: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready."""
        return {"mirror": self.name, "target": self.target, "columns": list(self.columns),
                "tenants": list(self.tenants), "steps": self.steps}  # fmt: skip


def create(
    settings: Settings,
    target_dsn: str,
    *,
    name: str | None = None,
    columns: str | None = "all",
    tenants: list[str] | tuple[str, ...] = (),
    roles: bool = True,
) -> MirrorReport:
    """Mirror the settings' table into the database at ``target_dsn`` (see the module docstring).

    :raises InvalidSetting: bad columns/tenants/name, the target is the primary itself, or a mirror of
        that name exists (exit 2).
    :raises DatabaseUnavailable: the target cannot be reached (exit 69).
    :raises WalLevelTooLow: the primary's ``wal_level`` is not logical (exit 69).
    :raises SchemaMismatch: the target holds a differently shaped table (exit 65).
    Nothing is left half-created: a failure after the first change undoes what was made.
    """
    cols, who = parse_columns(columns), parse_tenants(tenants)
    full = mirror_name(name, target_dsn)
    report = MirrorReport(full, _safe(target_dsn), cols, who)
    primary_dsn = resolve_dsn(settings)
    with connect(settings, autocommit=True) as prim, _connect_target(target_dsn) as tgt:
        from callvault import citus

        citus.refuse(prim, settings, "callvault mirror", citus.REPLICATION_WHY)
        require_logical(prim, f"mirroring {settings.qualified}")
        if _identity(prim) == _identity(tgt):
            raise InvalidSetting("mirror target is the primary database itself: --to must name another database")
        if not catalog.table_exists(prim, settings):
            from callvault.errors import NotInitialised

            raise NotInitialised(f"{settings.qualified} does not exist: run `callvault init` first")
        exists = tgt.execute("SELECT 1 FROM pg_subscription WHERE subname = %s", (full,)).fetchone()
        slot = prim.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (full,)).fetchone()
        if exists or slot:
            raise InvalidSetting(
                f"mirror {full} exists already: `callvault mirror drop --name {full[len(PREFIX) :]}` first"
            )
        _require_rights(prim, tgt, settings)
        if partman.installed(tgt) is None:
            partman.available_version(tgt)  # ExtensionMissing naming the install when the target lacks it
        done: list[str] = []
        try:
            # the target's own table, lifecycle and tenant isolation (one transaction: all or nothing)
            target_settings = Settings(dsn=target_dsn, schema=settings.schema, table=settings.table,
                                       lifecycle=settings.lifecycle, roles=settings.roles)  # fmt: skip
            with psycopg.connect(target_dsn, prepare_threshold=None) as t2:
                t2.execute("SET timezone TO 'UTC'")
                superuser = t2.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
                bootstrap.init(t2, target_settings, roles=roles and bool(superuser and superuser[0]))
                _cover(prim, t2, settings, target_settings)
                t2.commit()
            report.steps.append(
                "target table initialised (own lifecycle, tenant policy, partitions of the primary's range, default)"
            )
            pub = PublicationSpec(full, cols, who)
            publish(settings, name=pub.name, columns=",".join(cols), tenants=list(who))
            done.append("publication")
            report.steps.append(f"publication {full} on the primary (via the partition root)")
            same_cluster = _identity(prim)[0] == _identity(tgt)[0]
            if same_cluster:  # CREATE SUBSCRIPTION would wait for itself: make the slot first
                prim.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (full,))
                done.append("slot")
            tgt.execute(
                sql.SQL(
                    "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (copy_data = true, create_slot = {}, "
                    "slot_name = {})"
                ).format(
                    sql.Identifier(full),
                    sql.Literal(primary_dsn),
                    sql.Identifier(full),
                    sql.Literal(not same_cluster),
                    sql.Literal(full),
                )
            )
            done.append("subscription")
            report.steps.append(f"subscription {full} on the target, with the initial copy; slot {full} on the primary")
        except Exception:
            _undo(prim, tgt, full, done)
            raise
    return report


def _require_rights(prim: Conn, tgt: Conn, settings: Settings) -> None:
    """Before anything is made: on the primary the role owns the table (a publication needs it) and may
    replicate (the subscription connects as it); on the target it is a superuser (PostgreSQL 15
    creates subscriptions only as one). PermissionDenied (exit 77) naming the role and the fix."""
    from callvault.errors import PermissionDenied

    row = prim.execute(
        "SELECT current_user, r.rolsuper OR r.rolreplication, pg_has_role(current_user, c.relowner, 'USAGE') "
        "FROM pg_roles r, pg_class c WHERE r.rolname = current_user AND c.oid = %s::regclass",
        (catalog.parent_regclass(settings),),
    ).fetchone()
    assert row is not None
    who, replicate, owns = row
    if not owns:
        raise PermissionDenied(
            f"role {who} does not own {settings.qualified} on the primary, and only its owner may publish it: run "
            "`mirror create` with the owner's DSN (e.g. the callvault_owner role), or a superuser's"
        )
    if not replicate:
        raise PermissionDenied(
            f"role {who} may not replicate on the primary (the mirror's subscription connects as it): "
            f"ALTER ROLE {who} REPLICATION, or use a role that has it"
        )
    trow = tgt.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    if trow is None or not trow[1]:
        raise PermissionDenied(
            f"role {trow[0] if trow else '?'} on the target is not a superuser: PostgreSQL 15 creates subscriptions "
            "only as one; pass a superuser's DSN in --to"
        )


def _cover(prim: Conn, tgt: Conn, settings: Settings, target_settings: Settings) -> None:
    """Give the target a partition for every range the primary has (the initial copy and late rows
    must find one), a DEFAULT partition for rows outside all of them, and retention that drops."""
    pm = partman.installed(tgt)
    assert pm is not None
    have = set(catalog.partition_bounds(tgt, target_settings))
    missing = [lo for lo, hi in catalog.partition_bounds(prim, settings) if (lo, hi) not in have]
    if missing:
        tgt.execute(partman.create_partitions_sql(target_settings, pm, missing))
    default = sql.Identifier(target_settings.schema, f"{target_settings.table}_default")
    tgt.execute(
        sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF {} DEFAULT").format(
            default, sql.Identifier(target_settings.schema, target_settings.table)
        )
    )
    tgt.execute(
        sql.SQL("UPDATE {} SET retention_keep_table = false WHERE parent_table = %s").format(
            sql.Identifier(pm.schema, "part_config")
        ),
        (target_settings.qualified,),
    )
    from callvault import tenancy

    tenancy.secure(tgt, target_settings)


def _undo(prim: Conn, tgt: Conn, full: str, done: list[str]) -> None:
    """Remove what a failed ``create`` made (the target's table stays: it may hold rows)."""
    if "subscription" in done:
        _drop_subscription(tgt, full)
    if "slot" in done or "subscription" in done:
        _drop_slot(prim, full)
    if "publication" in done:
        prim.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(full)))


def _drop_subscription(tgt: Conn, full: str) -> bool:
    if tgt.execute("SELECT 1 FROM pg_subscription WHERE subname = %s", (full,)).fetchone() is None:
        return False
    ident = sql.Identifier(full)
    tgt.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(ident))
    tgt.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(ident))
    tgt.execute(sql.SQL("DROP SUBSCRIPTION {}").format(ident))
    return True


def _drop_slot(prim: Conn, full: str) -> bool:
    for _ in range(50):  # the walsender of a just-disabled subscription lets go within moments
        row = prim.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (full,)).fetchone()
        if row is None:
            return False
        if row[0] is not None:
            prim.execute("SELECT pg_terminate_backend(%s)", (row[0],))
            prim.execute("SELECT pg_sleep(0.1)")
            continue
        prim.execute("SELECT pg_drop_replication_slot(%s)", (full,))
        return True
    raise CallvaultError(f"replication slot {full} stays in use on the primary; try `callvault mirror drop` again")


def drop(settings: Settings, name: str, *, target_dsn: str | None = None, force: bool = False) -> MirrorReport:
    """Remove a mirror: the subscription on the target, the slot and the publication on the primary.

    Without ``target_dsn`` (or with ``force`` when the target is gone) only the primary's side is removed
    — the way to free a slot whose subscriber disappeared. The target's table and rows are kept.
    """
    full = name if name.startswith(PREFIX) else mirror_name(name, "")
    report = MirrorReport(full, _safe(target_dsn) if target_dsn else "")
    with connect(settings, autocommit=True) as prim:
        if target_dsn is not None:
            try:
                with _connect_target(target_dsn) as tgt:
                    if _drop_subscription(tgt, full):
                        report.steps.append(f"subscription {full} dropped on the target")
            except DatabaseUnavailable:
                if not force:
                    raise
                report.steps.append("target unreachable: its subscription is left (disabled when it comes back?)")
        if _drop_slot(prim, full):
            report.steps.append(f"slot {full} dropped on the primary")
        if prim.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (full,)).fetchone():
            prim.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(full)))
            report.steps.append(f"publication {full} dropped on the primary")
    if not report.steps:
        raise InvalidSetting(
            f"no mirror {full} here (no subscription, slot or publication): see `callvault mirror status`"
        )
    return report


@dataclass
class SlotState:
    """One callvault replication slot on the primary."""

    name: str
    active: bool
    lag_bytes: int | None
    retained_bytes: int | None
    lag_seconds: float | None
    inactive_since: datetime | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready."""
        return {"slot": self.name, "active": self.active, "lag_bytes": self.lag_bytes,
                "wal_retained_bytes": self.retained_bytes, "lag_seconds": self.lag_seconds,
                "inactive_since": self.inactive_since.isoformat() if self.inactive_since else None}  # fmt: skip


SLOTS_SQL = """
SELECT s.slot_name, s.active,
       pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint,
       pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint,
       extract(epoch FROM coalesce(r.replay_lag, r.flush_lag, r.write_lag))::float8
FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
WHERE s.slot_name LIKE 'callvault\\_mirror\\_%' ORDER BY s.slot_name
"""


def slots(conn: Conn) -> list[SlotState]:
    """callvault's replication slots on this (primary) server, with lag and WAL retained."""
    # pg_stat_replication's lag columns are NULL once a subscriber has caught up: 0 s when nothing is pending
    return [
        SlotState(str(n), bool(a), lag, ret, 0.0 if secs is None and a and lag == 0 else secs)
        for n, a, lag, ret, secs in conn.execute(SLOTS_SQL)
    ]


def status(settings: Settings, target_dsn: str | None = None) -> dict[str, object]:
    """Every callvault mirror of this primary (slots, lag, WAL retained) and, with ``target_dsn``, the
    target's side: subscription state, last message, rows mirrored, rows in its default partition."""
    with connect(settings, autocommit=True) as prim:
        out: dict[str, object] = {"slots": [s.to_dict() for s in slots(prim)]}
    if target_dsn is not None:
        with _connect_target(target_dsn) as tgt:
            subs = tgt.execute(
                "SELECT s.subname, s.subenabled, st.last_msg_receipt_time, st.latest_end_lsn::text, "
                "extract(epoch FROM now() - st.last_msg_receipt_time)::float8 "
                "FROM pg_subscription s LEFT JOIN pg_stat_subscription st ON st.subid = s.oid AND st.relid IS NULL "
                "WHERE s.subname LIKE 'callvault\\_mirror\\_%' ORDER BY 1"
            ).fetchall()
            table = sql.Identifier(settings.schema, settings.table)
            default = sql.Identifier(settings.schema, f"{settings.table}_default")
            rows = tgt.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()
            dflt = tgt.execute(
                sql.SQL("SELECT to_regclass({})").format(sql.Literal(f"{settings.schema}.{settings.table}_default"))
            ).fetchone()
            in_default = (
                tgt.execute(sql.SQL("SELECT count(*) FROM {}").format(default)).fetchone() if dflt and dflt[0] else (0,)
            )
            out["target"] = {
                "subscriptions": [
                    {"subscription": n, "enabled": bool(e), "last_message_at": t.isoformat() if t else None,
                     "latest_end_lsn": lsn, "seconds_since_last_message": secs}
                    for n, e, t, lsn, secs in subs
                ],
                "rows": int(rows[0]) if rows else 0,
                "rows_in_default_partition": int(in_default[0]) if in_default else 0,
            }  # fmt: skip
    return out
