"""Replication as the primary and the targets see it: callvault's mirror records (publication comments),
its replication slots, mirrors' tablesync slots and subscription tables — read here, and judged here
(WAL retained, inactive, leftover copy slots, tables not ready). ``status``/``health``
(:mod:`callvault.monitor`) and ``mirror status`` (:mod:`callvault.mirror`) both use it."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from psycopg.conninfo import conninfo_to_dict

from callvault import config
from callvault.db import Conn
from callvault.errors import InvalidSetting

PREFIX = "callvault_mirror_"
SYNC_SLOT = re.compile(r"pg_(\d+)_sync_(\d+)_(\d+)")
SYNC_STATES = {"i": "waiting for its initial copy", "d": "copying its initial data", "f": "finishing its copy",
               "s": "catching up after its copy", "r": "ready"}  # fmt: skip
RECORD_TAG = "callvault mirror "  # the publication's comment: this, then the record as JSON


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


def _identity(conn: Conn) -> tuple[int, str]:
    row = conn.execute("SELECT system_identifier, current_database() FROM pg_control_system()").fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


@dataclass(frozen=True)
class MirrorRecord:
    """What the primary knows of one of its mirrors (its publication's comment; ``None``: not recorded,
    e.g. a mirror made by an older callvault)."""

    name: str
    target: str | None = None  # the target's DSN without its password
    subscription_oid: int | None = None
    target_system_identifier: int | None = None
    patroni: str | None = None  # the Patroni REST API that keeps the mirror's slot permanent (mirror create --patroni)

    def owns(self, slot: SyncSlot) -> bool:
        """Whether ``slot`` is a tablesync slot of this mirror's subscription."""
        return (
            self.subscription_oid is not None
            and slot.subscription_oid == self.subscription_oid
            and self.target_system_identifier in (None, slot.system_identifier)
        )


def records(prim: Conn) -> dict[str, MirrorRecord]:
    """Every callvault mirror publication on this (primary) database, with its record."""
    out = {}
    for name, comment in prim.execute(
        "SELECT pubname, obj_description(oid, 'pg_publication') FROM pg_publication "
        "WHERE pubname LIKE 'callvault\\_mirror\\_%' ORDER BY 1"
    ):
        data: dict[str, Any] = {}
        if isinstance(comment, str) and comment.startswith(RECORD_TAG):
            try:
                loaded = json.loads(comment[len(RECORD_TAG) :])
                data = loaded if isinstance(loaded, dict) else {}
            except ValueError:
                data = {}
        oid, sysid = data.get("subscription_oid"), data.get("target_system_identifier")
        out[str(name)] = MirrorRecord(
            str(name),
            str(data["target"]) if isinstance(data.get("target"), str) else None,
            int(oid) if isinstance(oid, int) else None,
            int(sysid) if isinstance(sysid, str) and sysid.isdigit() else None,
            str(data["patroni"]) if isinstance(data.get("patroni"), str) else None,
        )
    return out


@dataclass(frozen=True)
class SyncSlot:
    """A tablesync slot on the primary (``pg_<suboid>_sync_<relid>_<sysid>``): a subscription's initial copy
    of one table makes it and drops it once the table is ready; one that stays means a copy not finished
    (still running, or failing and retrying) or abandoned (its subscription was dropped while copying)."""

    name: str
    active: bool
    retained_bytes: int | None
    subscription_oid: int
    relid: int
    system_identifier: int
    mirror: str | None = None  # the live callvault mirror whose subscription made it, when known
    # else: the live mirrors that may have (made by an older callvault, which did not record the oid)
    maybe: tuple[str, ...] = ()
    orphan: bool = False  # its target was reached and has no such subscription any more

    def to_dict(self) -> dict[str, object]:
        """JSON-ready."""
        return {"slot": self.name, "active": self.active, "wal_retained_bytes": self.retained_bytes,
                "subscription_oid": self.subscription_oid, "target_system_identifier": str(self.system_identifier),
                "mirror": self.mirror, "maybe_mirrors": list(self.maybe), "orphan": self.orphan}  # fmt: skip


SYNC_SLOTS_SQL = """
SELECT slot_name, active, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint
FROM pg_replication_slots
WHERE slot_name LIKE 'pg\\_%\\_sync\\_%' AND slot_type = 'logical' AND database = current_database()
ORDER BY slot_name
"""


def sync_slots(conn: Conn, known: dict[str, MirrorRecord] | None = None) -> list[SyncSlot]:
    """The tablesync slots of this (primary) database, each with the mirror that owns it when ``known``
    (:func:`records`) says so."""
    out = []
    unrecorded = tuple(r.name for r in (known or {}).values() if r.subscription_oid is None)
    for name, active, retained in conn.execute(SYNC_SLOTS_SQL):
        m = SYNC_SLOT.fullmatch(str(name))
        if m is None:
            continue
        slot = SyncSlot(str(name), bool(active), retained, int(m[1]), int(m[2]), int(m[3]))
        owner = next((r.name for r in (known or {}).values() if r.owns(slot)), None)
        out.append(replace(slot, mirror=owner, maybe=() if owner else unrecorded))
    return out


SUBSCRIPTION_TABLES_SQL = """
SELECT s.subname, r.srrelid::regclass::text, r.srsubstate::text
FROM pg_subscription s JOIN pg_subscription_rel r ON r.srsubid = s.oid
WHERE s.subname LIKE 'callvault\\_mirror\\_%'
  AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY 1, 2
"""


def subscription_tables(conn: Conn) -> list[dict[str, object]]:
    """The tables of this (target) database's callvault subscriptions and their state in
    ``pg_subscription_rel`` (``r`` is ready; anything else: its initial copy has not finished)."""
    return [
        {"subscription": sub, "table": table, "state": st, "ready": st == "r", "meaning": SYNC_STATES.get(st, st)}
        for sub, table, st in conn.execute(SUBSCRIPTION_TABLES_SQL)
    ]


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


SLOT_WAL_LIMIT_ENV = "CALLVAULT_SLOT_WAL_LIMIT_MB"
SLOT_WAL_LIMIT_MB = 1024  # WAL a callvault slot may hold back before health fails
INACTIVE_SLOT_WAL_MB = 16  # an inactive slot is a problem once it holds back this much (not a brief restart)


def slot_wal_limit() -> int:
    """Bytes of WAL a callvault replication slot may retain ($CALLVAULT_SLOT_WAL_LIMIT_MB, default 1024 MB)."""
    raw = config.knob(SLOT_WAL_LIMIT_ENV) or ""
    try:
        return int(float(raw) * 1024 * 1024) if raw else SLOT_WAL_LIMIT_MB * 1024 * 1024
    except ValueError:
        raise InvalidSetting(f"{SLOT_WAL_LIMIT_ENV}={raw!r} is not a number of megabytes") from None


def slot_problems(slots: list[dict[str, object]], limit: int) -> list[str]:
    """Health verdicts on callvault's replication slots (pure): too much WAL retained, or inactive while
    holding WAL back (its subscriber is gone or stopped). Each names the slot and the fix."""
    out = []
    for s in slots:
        name, kept = s["slot"], s.get("wal_retained_bytes")
        kept_b = int(str(kept)) if kept is not None else 0
        if kept_b > limit:
            out.append(
                f"replication slot {name} retains {kept_b / 1e6:,.0f} MB of WAL (limit {limit / 1e6:,.0f} MB, "
                f"{SLOT_WAL_LIMIT_ENV}): its mirror is behind or gone and the primary's disk fills; see "
                f"`callvault mirror status`, or `callvault mirror drop --name {name} --force` if the mirror is gone"
            )
        elif not s.get("active") and kept_b > INACTIVE_SLOT_WAL_MB * 1024 * 1024:
            out.append(
                f"replication slot {name} is inactive and holds {kept_b / 1e6:,.0f} MB of WAL: its subscriber is "
                f"not connected; restart it, or `callvault mirror drop --name {name} --force` if it is gone"
            )
    return out


def slotless_mirrors(prim: Conn) -> list[str]:
    """callvault mirrors recorded on this primary (their publications) whose slot is not here: the slot
    was on a primary that failed (PostgreSQL 15 keeps logical slots on one server only), or was dropped.
    None on a standby (slots are not replicated; its publications are)."""
    row = prim.execute("SELECT pg_is_in_recovery()").fetchone()
    if row is None or row[0]:
        return []
    have = {s.name for s in slots(prim)}
    return [name for name in records(prim) if name not in have]


def slotless_problems(names: list[str]) -> list[str]:
    """Health verdicts on :func:`slotless_mirrors` (pure): each names the mirror and the command."""
    return [
        f"mirror {n}: its replication slot is missing on this primary (a failover or switchover? PostgreSQL 15 "
        f"keeps a logical slot on one server only): its target receives nothing; run `callvault mirror resync "
        f"--name {n.removeprefix(PREFIX)}` (re-copies the table, no duplicates), or keep the slot across failovers "
        "with Patroni's permanent slots (docs/ha.md)"
        for n in names
    ]


def sync_slot_problems(slots: list[dict[str, object]], limit: int) -> list[str]:
    """Health verdicts on the tablesync slots on a primary (pure; ``callvault.mirror.SyncSlot.to_dict``).

    A live callvault mirror's: its initial copy of a table has not finished — running, or failing and
    retrying forever (duplicate keys when the target's table held rows) while the mirror's slot reads lag
    0. One whose target has no such subscription any more (``orphan``): left over, it keeps WAL forever.
    One that may be a mirror's made by an older callvault (``maybe_mirrors``): reported as such.
    Anyone else's: judged as callvault's own slots are, by the WAL it holds back."""
    out = []
    for s in slots:
        name, mirror, kept = s["slot"], s.get("mirror"), s.get("wal_retained_bytes")
        kept_b = int(str(kept)) if kept is not None else 0
        if s.get("orphan"):
            out.append(
                f"tablesync slot {name} on the primary was left by a subscription its target no longer has "
                f"({mirror or 'no live mirror'}) and keeps WAL ({kept_b / 1e6:,.1f} MB, growing): "
                f"SELECT pg_drop_replication_slot('{name}') on the primary"
            )
        elif mirror:
            out.append(
                f"mirror {mirror}: a table's initial copy has not finished (tablesync slot {name} on the primary): "
                "the mirror is incomplete though its lag may read 0, and a copy that fails (e.g. duplicate keys: the "
                "target's table held rows) retries forever; see `callvault mirror status --to <target>` and the "
                "target's server log"
            )
        elif s.get("maybe_mirrors"):
            maybe = ", ".join(map(str, s["maybe_mirrors"]))  # type: ignore[call-overload]
            out.append(
                f"tablesync slot {name} on the primary: a table's initial copy has not finished, or was abandoned, "
                f"maybe of mirror {maybe} (made by an older callvault, which did not record its subscription); "
                "see `callvault mirror status --to <target>` and the target's server log"
            )
        elif kept_b > limit or (not s.get("active") and kept_b > INACTIVE_SLOT_WAL_MB * 1024 * 1024):
            out.append(
                f"tablesync slot {name} on the primary holds {kept_b / 1e6:,.0f} MB of WAL and belongs to no live "
                "callvault mirror (its subscription dropped while copying?): once nothing copies with it, "
                f"SELECT pg_drop_replication_slot('{name}')"
            )
    return out


def mirror_table_problems(tables: list[dict[str, object]], where: str) -> list[str]:
    """Health verdicts on a mirror target's subscription tables (pure; ``callvault.mirror.subscription_tables``):
    each not ``ready`` in ``pg_subscription_rel`` is a problem — its changes are not applied."""
    return [
        f"mirror {t['subscription']}: table {t['table']} on {where} is not ready (state '{t['state']}' in "
        f"pg_subscription_rel: {t['meaning']}), so its changes are not applied; a copy that fails (e.g. duplicate "
        "keys: the table held rows before the mirror began) retries forever, see that server's log: `callvault "
        f"mirror drop --name {str(t['subscription']).removeprefix('callvault_mirror_')} --to …`, then `mirror "
        "create … --truncate-target`"
        for t in tables
        if not t.get("ready")
    ]


# -- this server's role: primary or standby, its timeline, its standbys (HA: which node is primary) --------
SERVER_SQL = """
SELECT pg_is_in_recovery(),
       has_function_privilege('pg_control_checkpoint()', 'execute'),
       has_function_privilege('pg_ls_waldir()', 'execute'),
       current_setting('synchronous_standby_names'),
       (SELECT coalesce(json_agg(json_build_object('name', application_name, 'state', state, 'sync_state', sync_state,
                                                   'replay_lag_s', extract(epoch FROM replay_lag))
                                 ORDER BY application_name), '[]'::json)
        FROM pg_stat_replication WHERE application_name IS NOT NULL)
"""
# Separate statements: Postgres checks EXECUTE on every function of a statement when it starts, even in a
# CASE branch never taken (a role without pg_monitor may call neither).
TIMELINE_SQL = "SELECT timeline_id FROM pg_control_checkpoint()"
PROMOTED_SQL = "SELECT modification FROM pg_ls_waldir() WHERE name = lpad(upper(to_hex(%s::int)), 8, '0') || '.history'"
RECENT_PROMOTION_S = 24 * 3600  # a promotion this recent is reported (status notes, metrics always)


def server(conn: Conn) -> dict[str, object]:
    """The server ``conn`` reached: ``host``/``port``, ``in_recovery`` (a standby), its ``timeline`` and
    ``promoted_at`` (when the timeline began: the last failover or switchover onto it; None on timeline 1 or
    without the privilege to read pg_control / the WAL directory), ``synchronous_standby_names`` and the
    ``standbys`` streaming from it (name, state, sync_state, replay lag in seconds)."""
    row = conn.execute(SERVER_SQL).fetchone()
    assert row is not None
    in_recovery, may_control, may_ls_wal, sync_names, standbys = row
    timeline = promoted = None
    if may_control:
        tl = conn.execute(TIMELINE_SQL).fetchone()
        timeline = tl[0] if tl else None
        if may_ls_wal and timeline is not None:
            when = conn.execute(PROMOTED_SQL, (timeline,)).fetchone()
            promoted = when[0] if when else None
    return {
        "host": conn.info.host, "port": conn.info.port, "in_recovery": bool(in_recovery),
        "timeline": int(timeline) if timeline is not None else None,
        "promoted_at": promoted if isinstance(promoted, datetime) else None,
        "synchronous_standby_names": str(sync_names or ""),
        "standbys": standbys if isinstance(standbys, list) else json.loads(standbys or "[]"),
    }  # fmt: skip


def server_problems(srv: dict[str, object]) -> list[str]:
    """A primary that asks for a synchronous standby and has none streaming: every commit waits."""
    if srv.get("in_recovery") or not srv.get("synchronous_standby_names"):
        return []
    standbys = srv.get("standbys") or []
    assert isinstance(standbys, list)
    if any(s.get("sync_state") in ("sync", "quorum") and s.get("state") == "streaming" for s in standbys):
        return []
    return [
        f"synchronous replication: no synchronous standby streams from {srv['host']}:{srv['port']} "
        f"(synchronous_standby_names = {srv['synchronous_standby_names']!r}): commits wait until one does; "
        "start a standby (`callvault dev status --ha` in the lab, `patronictl list` elsewhere)"
    ]


def server_notes(srv: dict[str, object], now: datetime) -> list[str]:
    """A standby (status of what it replicated; the worker and maintenance need the primary), and a
    promotion in the last day (a failover or switchover)."""
    out = []
    if srv.get("in_recovery"):
        out.append(
            f"{srv['host']}:{srv['port']} is a standby: this is what it replicated; the worker, maintenance and "
            "archive run on the primary (target_session_attrs=read-write)"
        )
    promoted = srv.get("promoted_at")
    if isinstance(promoted, datetime) and (now - promoted).total_seconds() < RECENT_PROMOTION_S:
        out.append(
            f"{srv['host']}:{srv['port']} became the primary at {promoted.isoformat()} (timeline {srv['timeline']}): "
            "a failover or switchover; writers and the worker reconnect by themselves, mirrors: "
            "`callvault mirror status`"
        )
    return out
