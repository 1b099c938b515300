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

A target table that already holds rows (a mirror dropped earlier keeps its rows there) is refused: the
initial copy would hit duplicate keys and retry forever while the slot's lag reads 0. ``create
--truncate-target`` empties it first. Each mirror's publication carries a record (its comment: the
target without password, the subscription's oid, the target's system identifier) so that the
primary can tell its tablesync slots (``pg_<suboid>_sync_<relid>_<sysid>``, made by a table's
initial copy) from anyone else's: ``status`` and ``health`` report a table not ready on the target and
a tablesync slot left on the primary; ``drop`` removes them, and refuses without ``--force`` when it
cannot reach the target.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from psycopg import sql

from callvault import bootstrap, catalog, partman
from callvault.config import Settings
from callvault.config import conninfo_without_secrets as _without_secrets
from callvault.config import describe_dsn as _safe
from callvault.db import Conn, connect, resolve_dsn
from callvault.errors import CallvaultError, DatabaseUnavailable, InvalidSetting
from callvault.publication import PublicationSpec, parse_columns, parse_tenants, publish, require_logical
from callvault.replication_state import (
    PREFIX as PREFIX,
)
from callvault.replication_state import (
    RECORD_TAG as RECORD_TAG,
)
from callvault.replication_state import (
    SLOTS_SQL as SLOTS_SQL,
)
from callvault.replication_state import (
    SUBSCRIPTION_TABLES_SQL as SUBSCRIPTION_TABLES_SQL,
)
from callvault.replication_state import (
    SYNC_SLOT as SYNC_SLOT,
)
from callvault.replication_state import (
    SYNC_SLOTS_SQL as SYNC_SLOTS_SQL,
)
from callvault.replication_state import (
    SYNC_STATES as SYNC_STATES,
)
from callvault.replication_state import (
    MirrorRecord as MirrorRecord,
)
from callvault.replication_state import (
    SlotState as SlotState,
)
from callvault.replication_state import (
    SyncSlot as SyncSlot,
)
from callvault.replication_state import (
    _identity,
)
from callvault.replication_state import (
    mirror_name as mirror_name,
)
from callvault.replication_state import (
    records as records,
)
from callvault.replication_state import (
    slots as slots,
)
from callvault.replication_state import (
    subscription_tables as subscription_tables,
)
from callvault.replication_state import (
    sync_slots as sync_slots,
)

COUNT_CAP = 1_000_000  # rows counted in a non-empty target table before "more than"


class TargetNotEmpty(CallvaultError):
    """The target's table already holds rows (e.g. left by a mirror dropped earlier): the initial copy would
    fail on duplicate keys and retry forever. Nothing was made; ``--truncate-target`` empties it first."""

    exit_code = 65  # EX_DATAERR, as a table of another shape


def _connect_target(dsn: str) -> psycopg.Connection[tuple[Any, ...]]:
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10, prepare_threshold=None)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(
            f"mirror target {_safe(dsn)} cannot be reached: {_reason(exc)}; check --to (host, port, database, password)"
        ) from exc
    conn.execute("SET timezone TO 'UTC'")
    return conn


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
    truncate_target: bool = False,
    patroni: str | None = None,
) -> MirrorReport:
    """Mirror the settings' table into the database at ``target_dsn`` (see the module docstring).

    :param truncate_target: the target's table may hold rows: delete them first (else refused).
    :param patroni: a Patroni REST API URL: the mirror's slot is declared permanent there, so it survives
        failovers (Patroni keeps a copy on every standby); ``drop`` undeclares it.
    :raises InvalidSetting: bad columns/tenants/name, the target is the primary itself, a mirror of
        that name exists, or the target's table already receives another subscription (exit 2).
    :raises DatabaseUnavailable: the target cannot be reached (exit 69).
    :raises WalLevelTooLow: the primary's ``wal_level`` is not logical (exit 69).
    :raises SchemaMismatch: the target holds a differently shaped table (exit 65).
    :raises TargetNotEmpty: the target's table holds rows and ``truncate_target`` is not set (exit 65).
    Nothing is left half-created: a failure after the first change undoes what was made (the target's
    table, once made or emptied, stays so).
    """
    who = parse_tenants(tenants)
    full = mirror_name(name, target_dsn)
    patroni = patroni_url(patroni) if patroni else None
    report = MirrorReport(full, _safe(target_dsn), (), who)
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
        shape = catalog.table_shape(prim, settings)  # the table's own columns can be mirrored too
        cols = report.columns = parse_columns(columns, shape.names)
        exists = tgt.execute("SELECT 1 FROM pg_subscription WHERE subname = %s", (full,)).fetchone()
        slot = prim.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (full,)).fetchone()
        if exists or slot:
            where = "its subscription on the target" if exists else "its slot on the primary"
            raise InvalidSetting(
                f"mirror {full} exists already ({where}): `callvault mirror drop --name {full[len(PREFIX) :]} "
                "--to <this target>` first, or choose another --name"
            )
        _require_rights(prim, tgt, settings)
        if partman.installed(tgt) is None:
            partman.available_version(tgt)  # ExtensionMissing naming the install when the target lacks it
        held = _require_empty_target(tgt, settings, target_dsn, truncate_target)
        done: list[str] = []
        try:
            # the target's own table, lifecycle and tenant isolation (one transaction: all or nothing)
            target_settings = Settings(dsn=target_dsn, schema=settings.schema, table=settings.table,
                                       lifecycle=settings.lifecycle, roles=settings.roles)  # fmt: skip
            with psycopg.connect(target_dsn, prepare_threshold=None) as t2:
                t2.execute("SET timezone TO 'UTC'")
                superuser = t2.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
                bootstrap.init(t2, target_settings, roles=roles and bool(superuser and superuser[0]))
                for extra in shape.extras:  # the target's table gets the mirrored columns of the platform's own
                    if extra.name in cols:
                        t2.execute(
                            sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                                sql.Identifier(settings.schema, settings.table),
                                sql.Identifier(extra.name),
                                sql.SQL(extra.pg),
                            )
                        )  # fmt: skip  (the type as the primary's catalog spells it)
                _cover(prim, t2, settings, target_settings)
                if held:  # --truncate-target: the initial copy must not meet rows of an earlier mirror
                    t2.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(settings.schema, settings.table)))
                t2.commit()
            report.steps.append(
                "target table initialised (own lifecycle, tenant policy, partitions of the primary's range, default)"
            )
            if held:
                report.steps.append(f"target table {settings.qualified} emptied first (--truncate-target): {held} rows")
            pub = PublicationSpec(full, cols, who, shape.names)
            publish(settings, name=pub.name, columns=",".join(cols), tenants=list(who))
            done.append("publication")
            report.steps.append(f"publication {full} on the primary (via the partition root)")
            _subscribe(prim, tgt, full, primary_dsn, done)
            report.steps.append(f"subscription {full} on the target, with the initial copy; slot {full} on the primary")
            if patroni:
                patroni_slot(patroni, full, _identity(prim)[1])
                done.append("patroni")
                report.steps.append(f"slot {full} declared permanent in Patroni ({patroni}): kept across failovers")
            _record(prim, tgt, full, target_dsn, patroni)
        except Exception:
            if "patroni" in done and patroni:
                with contextlib.suppress(CallvaultError):
                    patroni_slot(patroni, full, None)
            _undo(prim, tgt, full, done)
            raise
    return report


def _subscribe(prim: Conn, tgt: Conn, full: str, primary_dsn: str, done: list[str]) -> None:
    """The subscription ``full`` on the target, with the initial copy, and its slot on the primary."""
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


def _require_empty_target(tgt: Conn, settings: Settings, target_dsn: str, truncate: bool) -> str:
    """Before anything is made: the target's table, when it exists, receives no other subscription and
    holds no rows (unless ``truncate``). Rows there — an earlier mirror's, kept by ``mirror drop`` — make
    the initial copy fail on duplicate keys and retry forever while the slot's lag reads 0.
    Returns the rows held ("" when none), for the report."""
    name = sql.Identifier(settings.schema, settings.table)
    row = tgt.execute("SELECT to_regclass(%s)::oid", (name.as_string(tgt),)).fetchone()
    if row is None or row[0] is None:
        return ""
    where = f"target table {settings.qualified} on {_safe(target_dsn)}"
    feeding = tgt.execute(
        "SELECT s.subname FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid "
        "WHERE r.srrelid = %s ORDER BY 1",
        (row[0],),
    ).fetchall()
    if feeding:
        raise InvalidSetting(
            f"{where} already receives subscription {feeding[0][0]}: two mirrors into one table collide; "
            f"`callvault mirror drop --name {str(feeding[0][0]).removeprefix(PREFIX)} --to …` first, or mirror "
            "into another database (--to)"
        )
    counted = tgt.execute(
        sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} LIMIT %s) s").format(name), (COUNT_CAP + 1,)
    ).fetchone()
    n = int(counted[0]) if counted else 0
    if n == 0:
        return ""
    rows = f"more than {COUNT_CAP:,}" if n > COUNT_CAP else f"{n:,}"
    if not truncate:
        raise TargetNotEmpty(
            f"{where} already holds {rows} rows (an earlier mirror's?): the initial copy would fail on duplicate "
            "keys and retry forever; pass --truncate-target to delete them first, or mirror into another "
            "database (--to); nothing was made"
        )
    return rows


def _record(prim: Conn, tgt: Conn, full: str, target_dsn: str, patroni: str | None = None) -> None:
    """Note on the primary, as the publication's comment, what only the target knows: the subscription's
    oid and the target's system identifier (they name the tablesync slots its initial copy makes on the
    primary), the target without its password (``drop`` without ``--to`` tries it), and the Patroni API
    that keeps the slot permanent, if any."""
    row = tgt.execute("SELECT oid FROM pg_subscription WHERE subname = %s", (full,)).fetchone()
    record = {"target": _without_secrets(target_dsn), "subscription_oid": int(row[0]) if row else None,
              "target_system_identifier": str(_identity(tgt)[0])}  # fmt: skip
    if patroni:
        record["patroni"] = patroni
    prim.execute(
        sql.SQL("COMMENT ON PUBLICATION {} IS {}").format(
            sql.Identifier(full), sql.Literal(RECORD_TAG + json.dumps(record, sort_keys=True))
        )
    )


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
    suboid = _drop_subscription(tgt, full) if "subscription" in done else None
    if "slot" in done or "subscription" in done:
        _drop_slot(prim, full)
    if suboid is not None:
        sysid = _identity(tgt)[0]
        for s in sync_slots(prim):
            if s.subscription_oid == suboid and s.system_identifier == sysid:
                _drop_slot(prim, s.name)
    if "publication" in done:
        prim.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(full)))


def _drop_subscription(tgt: Conn, full: str) -> int | None:
    """Drop the subscription on the target without reaching for its slot (the primary's side is dropped
    by callvault, from the primary); its oid, or ``None`` when there was none."""
    row = tgt.execute(
        "SELECT s.oid, d.datname = current_database(), d.datname FROM pg_subscription s "
        "JOIN pg_database d ON d.oid = s.subdbid WHERE s.subname = %s",
        (full,),
    ).fetchone()
    if row is None:
        return None
    if not row[1]:
        raise InvalidSetting(
            f"subscription {full} is in database {row[2]} of the target's server, not in the one --to names: "
            "point --to at that database"
        )
    ident = sql.Identifier(full)
    tgt.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(ident))
    tgt.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(ident))
    tgt.execute(sql.SQL("DROP SUBSCRIPTION {}").format(ident))
    return int(row[0])


def _drop_slot(prim: Conn, slot: str) -> bool:
    for _ in range(50):  # the walsender of a just-disabled subscription lets go within moments
        row = prim.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
        if row is None:
            return False
        if row[0] is not None:
            prim.execute("SELECT pg_terminate_backend(%s)", (row[0],))
            prim.execute("SELECT pg_sleep(0.1)")
            continue
        prim.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        return True
    raise CallvaultError(f"replication slot {slot} stays in use on the primary; try `callvault mirror drop` again")


def patroni_url(url: str) -> str:
    """A Patroni REST API base URL (``http://host:8008``), checked without I/O."""
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.path not in ("", "/"):
        raise InvalidSetting(f"--patroni {url!r} is not a Patroni REST API URL: give e.g. http://127.0.0.1:8008")
    return url.rstrip("/")


def patroni_slot(url: str, slot: str, database: str | None) -> None:
    """Declare ``slot`` a permanent logical slot in Patroni's dynamic configuration (``database`` None:
    remove it), through its REST API (``PATCH /config``, any member: Patroni keeps it in the DCS). Patroni
    then keeps the slot on every standby and the subscription continues after a failover (docs/ha.md)."""
    import urllib.error
    import urllib.request

    value: object = {"type": "logical", "database": database, "plugin": "pgoutput"} if database else None
    req = urllib.request.Request(  # noqa: S310 (an http(s) URL, checked by patroni_url)
        f"{url}/config", data=json.dumps({"slots": {slot: value}}).encode(), method="PATCH",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 (an http(s) URL, checked)
            r.read()
    except urllib.error.HTTPError as exc:
        raise CallvaultError(
            f"Patroni at {url} refused to change its slots ({exc.code}: {exc.read().decode(errors='replace')[:200]}): "
            "check --patroni (its REST API, with write access)"
        ) from exc
    except (OSError, ValueError) as exc:
        raise DatabaseUnavailable(
            f"Patroni's REST API at {url} cannot be reached ({exc}): check --patroni (http://<any member>:8008)"
        ) from exc


def _reason(exc: BaseException | None) -> str:
    """The first line of a connection failure, without libpq's "connection to server ... failed:"."""
    lines = [ln.strip() for ln in str(exc or "").strip().splitlines() if ln.strip()]
    return lines[0].rsplit(" failed: ", 1)[-1].strip() if lines else type(exc).__name__


def drop(settings: Settings, name: str, *, target_dsn: str | None = None, force: bool = False) -> MirrorReport:
    """Remove a mirror: the subscription on the target; the slot, the tablesync slots its initial copy
    left and the publication on the primary. The target's table and rows are kept.

    The target is ``target_dsn``, else the one recorded when the mirror was made (without its password:
    libpq's ``.pgpass`` or ``PGPASSWORD`` may supply it). When it cannot be reached — or is not known —
    nothing is dropped unless ``force``: then only the primary's side is (the way to free the slots of a
    mirror whose target is gone; its subscription, if the target comes back, fails until dropped there).

    :raises DatabaseUnavailable: the target cannot be reached and ``force`` is not set (exit 69).
    :raises InvalidSetting: no target given or recorded and ``force`` is not set, or no such mirror (exit 2).
    """
    full = name if name.startswith(PREFIX) else mirror_name(name, "")
    with connect(settings, autocommit=True) as prim:
        known = records(prim)
        rec = known.get(full, MirrorRecord(full))
        target = target_dsn if target_dsn is not None else (None if force else rec.target)
        report = MirrorReport(full, _safe(target) if target else "")
        suboid, sysid = rec.subscription_oid, rec.target_system_identifier
        on_target: set[int] | None = None  # the target cluster's subscriptions, once it was reached
        here = prim.execute(
            "SELECT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = %s) "
            "OR EXISTS (SELECT FROM pg_publication WHERE pubname = %s)",
            (full, full),
        ).fetchone()
        if target is None and not force and here and here[0]:
            raise InvalidSetting(
                f"mirror {full}: no --to given and no target recorded for it (made by an older callvault), so its "
                "subscription cannot be dropped: pass --to with the target's DSN, or --force to drop the primary's "
                "side only (slot, tablesync slots, publication)"
            )
        if target is not None:
            try:
                with _connect_target(target) as tgt:
                    sysid = _identity(tgt)[0]
                    recorded = rec.target_system_identifier
                    if recorded is not None and recorded != sysid and not force:
                        raise InvalidSetting(
                            f"mirror {full}: --to {_safe(target)} is another server than its target ({rec.target}, "
                            "recorded when it was made): point --to at that one, or pass --force to drop the "
                            "primary's side only"
                        )
                    on_target = {int(r[0]) for r in tgt.execute("SELECT oid FROM pg_subscription")}
                    dropped = _drop_subscription(tgt, full)
                    if dropped is not None:
                        suboid = dropped
                        on_target.discard(dropped)
                        report.steps.append(f"subscription {full} dropped on the target")
            except DatabaseUnavailable as exc:
                if not force:
                    raise DatabaseUnavailable(
                        f"mirror {full}: target {_safe(target)} cannot be reached ({_reason(exc.__cause__)}), so its "
                        "subscription cannot be dropped: run again once it is back (--to with its DSN, password "
                        "included), or pass --force to drop the primary's side only (slot, tablesync slots, "
                        "publication); nothing was dropped"
                    ) from exc
                report.steps.append(
                    f"target {_safe(target)} unreachable: its subscription {full} stays there and fails until "
                    "dropped there"
                )
        if rec.patroni:  # else Patroni makes the slot again
            patroni_slot(rec.patroni, full, None)
            report.steps.append(f"slot {full} no longer permanent in Patroni ({rec.patroni})")
        if _drop_slot(prim, full):
            report.steps.append(f"slot {full} dropped on the primary")
        others = [r for n, r in known.items() if n != full]
        for slot in sync_slots(prim):
            if suboid is not None:
                mine = slot.subscription_oid == suboid and sysid in (None, slot.system_identifier)
            else:  # not known, nor the target's subscriptions: the inactive ones no other mirror's record claims
                mine = on_target is None and not slot.active and not any(r.owns(slot) for r in others)
            # with the target reached: a tablesync slot of a subscription it no longer has is left over
            orphan = (
                on_target is not None and slot.system_identifier == sysid and slot.subscription_oid not in on_target
            )
            if (mine or orphan) and _drop_slot(prim, slot.name):
                report.steps.append(f"tablesync slot {slot.name} dropped on the primary")
        if prim.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (full,)).fetchone():
            prim.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(full)))
            report.steps.append(f"publication {full} dropped on the primary")
    if not report.steps:
        looked = "no subscription on the target, " if target is not None else ""
        raise InvalidSetting(
            f"no mirror {full} here ({looked}no slot or publication on the primary): see `callvault mirror status`"
            + ("" if target is not None else "; pass --to to drop its subscription on the target")
        )
    return report


def resync(settings: Settings, name: str, *, target_dsn: str | None = None) -> MirrorReport:
    """Subscribe a mirror again from the start: after a failover left its slot behind on the old primary
    (PostgreSQL 15 keeps a logical slot on one server), or when its target fell behind for good.

    On the target its subscription is dropped (not the slot), its table emptied and its partitions made to
    cover the primary's range again, in one transaction; on the primary the mirror's slot and its old
    subscription's tablesync slots are dropped when present; then a new subscription copies every row of
    the publication (its columns and tenants, unchanged) once. Rerun after a failure: it starts over.

    :raises InvalidSetting: no such mirror on this primary, no target given or recorded, or the target is
        another server than the mirror's (exit 2).
    :raises NotPrimary: the DSN reaches a standby (exit 69).
    :raises DatabaseUnavailable: the target cannot be reached (exit 69).
    """
    from callvault.db import require_primary

    full = name if name.startswith(PREFIX) else mirror_name(name, "")
    primary_dsn = resolve_dsn(settings)
    with connect(settings, autocommit=True) as prim:
        require_primary(prim, primary_dsn, "mirror resync")
        rec = records(prim).get(full)
        if rec is None:
            raise InvalidSetting(
                f"no mirror {full} on this primary (no publication of that name): see `callvault mirror status`; "
                "`callvault mirror create --to DSN` makes one"
            )
        target = target_dsn if target_dsn is not None else rec.target
        if target is None:
            raise InvalidSetting(f"mirror {full}: no target recorded for it: pass --to with the target's DSN")
        report = MirrorReport(full, _safe(target))
        with _connect_target(target) as tgt:
            sysid = _identity(tgt)[0]
            if rec.target_system_identifier is not None and rec.target_system_identifier != sysid:
                raise InvalidSetting(
                    f"mirror {full}: --to {_safe(target)} is another server than its target ({rec.target}, recorded "
                    "when it was made): point --to at that one"
                )
            old = _drop_subscription(tgt, full)
            if old is not None:
                report.steps.append(f"subscription {full} dropped on the target")
            if rec.patroni:  # Patroni would make the slot again under the new subscription
                patroni_slot(rec.patroni, full, None)
            if _drop_slot(prim, full):
                report.steps.append(f"slot {full} dropped on the primary")
            for slot in sync_slots(prim):
                mine = slot.subscription_oid in (old, rec.subscription_oid) and slot.system_identifier == sysid
                if mine and _drop_slot(prim, slot.name):
                    report.steps.append(f"tablesync slot {slot.name} dropped on the primary")
            target_settings = Settings(dsn=target, schema=settings.schema, table=settings.table,
                                       lifecycle=settings.lifecycle, roles=settings.roles)  # fmt: skip
            with psycopg.connect(target, prepare_threshold=None) as t2:  # cover and empty: one transaction
                t2.execute("SET timezone TO 'UTC'")
                _cover(prim, t2, settings, target_settings)
                t2.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(settings.schema, settings.table)))
                t2.commit()
            report.steps.append(f"target table {settings.qualified} emptied (its partitions cover the primary's range)")
            done: list[str] = []
            try:
                _subscribe(prim, tgt, full, primary_dsn, done)
            except Exception:
                _undo(prim, tgt, full, done)  # the subscription and slot only: the publication stays
                raise
            report.steps.append(f"subscription {full} on the target, with the initial copy; slot {full} on the primary")
            if rec.patroni:
                patroni_slot(rec.patroni, full, _identity(prim)[1])
                report.steps.append(f"slot {full} declared permanent in Patroni again ({rec.patroni})")
            _record(prim, tgt, full, target, rec.patroni)
    return report


def status(settings: Settings, target_dsn: str | None = None) -> dict[str, object]:
    """Every callvault mirror of this primary (slots, lag, WAL retained; tablesync slots left by initial
    copies) and, with ``target_dsn``, the target's side: subscription state, each table's sync state,
    last message, rows mirrored, rows in its default partition. ``problems`` (``healthy`` when none):
    the verdicts ``health`` gives, plus, with the target, its tables not ready and tablesync slots of
    subscriptions it no longer has."""
    from callvault.replication_state import (
        mirror_table_problems,
        slot_problems,
        slot_wal_limit,
        slotless_mirrors,
        slotless_problems,
        sync_slot_problems,
    )

    limit = slot_wal_limit()
    with connect(settings, autocommit=True) as prim:
        main = [s.to_dict() for s in slots(prim)]
        sync = sync_slots(prim, records(prim))
        slotless = slotless_mirrors(prim)
    out: dict[str, object] = {"slots": main, "mirrors_without_slot": slotless}
    problems = slot_problems(main, limit) + slotless_problems(slotless)
    table_problems: list[str] = []
    if target_dsn is not None:
        with _connect_target(target_dsn) as tgt:
            sysid = _identity(tgt)[0]
            live = {int(r[0]) for r in tgt.execute("SELECT oid FROM pg_subscription")}
            sync = [
                replace(s, orphan=True) if s.system_identifier == sysid and s.subscription_oid not in live else s
                for s in sync
            ]
            tables = subscription_tables(tgt)
            table_problems = mirror_table_problems(tables, _safe(target_dsn))
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
                     "latest_end_lsn": lsn, "seconds_since_last_message": secs,
                     "tables": [
                         {k: v for k, v in r.items() if k != "subscription"} for r in tables if r["subscription"] == n
                     ]}
                    for n, e, t, lsn, secs in subs
                ],
                "rows": int(rows[0]) if rows else 0,
                "rows_in_default_partition": int(in_default[0]) if in_default else 0,
            }  # fmt: skip
    out["tablesync_slots"] = [s.to_dict() for s in sync]
    out["problems"] = problems + sync_slot_problems(out["tablesync_slots"], limit) + table_problems  # type: ignore[arg-type]
    out["healthy"] = not out["problems"]
    return out
