"""Health verdicts on replication: callvault's slots (WAL retained, inactive), mirrors' leftover
tablesync slots and subscription tables not ready (pure, but for the WAL limit knob). ``status``/``health``
(:mod:`callvault.monitor`) and ``mirror status`` (:mod:`callvault.mirror`) both judge with these."""

from __future__ import annotations

from callvault import config
from callvault.errors import InvalidSetting

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
