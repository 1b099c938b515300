"""Legal holds: a tenant, or one subject of a tenant, whose calls must not be removed.

While a hold is active, ``callvault erase`` refuses to erase what it covers and ``callvault archive
prune`` refuses to delete the held tenant's archived objects (one line naming the hold, exit code 77).
Archiving is unaffected (it never drops before the archive is verified). Holds are never deleted:
releasing one records who released it and when, so the table is the record of every hold change."""

from __future__ import annotations

import getpass
import hashlib
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from psycopg import sql

from callvault import catalog
from callvault.config import META_SCHEMA, Settings
from callvault.db import Conn
from callvault.errors import HoldRefused, InvalidSetting
from callvault.privacy.subject import ensure
from callvault.tenancy.ids import tenant_value

HOLDS = sql.Identifier(META_SCHEMA, "holds")


@dataclass(frozen=True)
class Hold:
    """One legal hold, active or released (``subject`` None: every call of the tenant)."""

    id: int
    table: str
    tenant_id: str
    subject: str | None
    reason: str
    placed_by: str
    placed_at: datetime
    released_by: str | None
    released_at: datetime | None

    @property
    def scope(self) -> str:
        """What the hold covers, without the subject's value."""
        return f"tenant {self.tenant_id}" + (" (one subject)" if self.subject is not None else " (all calls)")

    @property
    def subject_digest(self) -> str | None:
        """What lists show of the subject: a SHA-256 prefix (the value itself is personal data)."""
        return hashlib.sha256(self.subject.encode()).hexdigest()[:12] if self.subject is not None else None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready (``hold list --json``): the subject as a SHA-256 prefix only."""
        return {
            "id": self.id, "table": self.table, "tenant_id": self.tenant_id, "subject_sha256": self.subject_digest,
            "reason": self.reason, "placed_by": self.placed_by, "placed_at": self.placed_at.isoformat(),
            "released_by": self.released_by,
            "released_at": self.released_at.isoformat() if self.released_at else None,
        }  # fmt: skip


def who() -> str:
    """Who is acting: the OS user (recorded with holds and erasures)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def place(conn: Conn, settings: Settings, tenant_id: str, reason: str, subject: str | None = None) -> Hold:
    """Place a hold on a tenant (``subject`` None) or one subject of it; returns it."""
    tenant = tenant_value(tenant_id)
    if not reason.strip():
        raise InvalidSetting("--reason is empty: say why the data is held (a case or ticket number)")
    if subject is not None and not subject.strip():
        raise InvalidSetting("--subject is empty: give the subject's value as it appears in metadata")
    ensure(conn)
    row = conn.execute(
        sql.SQL(
            "INSERT INTO {} (parent_table, tenant_id, subject, reason, placed_by) VALUES (%s, %s, %s, %s, %s) "
            "RETURNING id"
        ).format(HOLDS),
        (settings.qualified, tenant, subject, reason.strip(), who()),
    ).fetchone()
    assert row is not None
    return get(conn, settings, int(row[0]))


def get(conn: Conn, settings: Settings, hold_id: int) -> Hold:
    """Hold ``hold_id`` of the table, or InvalidSetting when there is none."""
    ensure(conn)
    row = conn.execute(
        sql.SQL(
            "SELECT id, parent_table, tenant_id::text, subject, reason, placed_by, placed_at, released_by, "
            "released_at FROM {} WHERE id = %s AND parent_table = %s"
        ).format(HOLDS),
        (hold_id, settings.qualified),
    ).fetchone()
    if row is None:
        raise InvalidSetting(f"hold {hold_id} does not exist for {settings.qualified}: see `callvault hold list`")
    return Hold(*row)


def release(conn: Conn, settings: Settings, hold_id: int) -> Hold:
    """Release an active hold (recorded, never deleted); InvalidSetting when it is unknown or released."""
    hold = get(conn, settings, hold_id)
    if hold.released_at is not None:
        raise InvalidSetting(f"hold {hold_id} was already released ({hold.released_at:%Y-%m-%d %H:%M} UTC)")
    conn.execute(
        sql.SQL("UPDATE {} SET released_by = %s, released_at = now() WHERE id = %s").format(HOLDS), (who(), hold_id)
    )
    return get(conn, settings, hold_id)


def holds(conn: Conn, settings: Settings, *, active_only: bool = True) -> list[Hold]:
    """The table's holds, oldest first: the active ones, or every one ever placed (none on an install
    older than holds: reading them never creates tables, so prune runs as a role that may not)."""
    if not catalog.meta_table_exists(conn, "holds"):
        return []
    where = sql.SQL("AND released_at IS NULL") if active_only else sql.SQL("")
    rows = conn.execute(
        sql.SQL(
            "SELECT id, parent_table, tenant_id::text, subject, reason, placed_by, placed_at, released_by, "
            "released_at FROM {} WHERE parent_table = %s {} ORDER BY id"
        ).format(HOLDS, where),
        (settings.qualified,),
    ).fetchall()
    return [Hold(*r) for r in rows]


def covering(conn: Conn, settings: Settings, tenant_id: str | UUID, subject: str | None = None) -> list[Hold]:
    """The active holds that cover ``tenant_id`` (with ``subject`` None: any hold of the tenant; else the
    tenant's whole-tenant holds and that subject's)."""
    tenant = tenant_value(tenant_id)
    return [
        h for h in holds(conn, settings)
        if h.tenant_id == tenant and (subject is None or h.subject is None or h.subject == subject)
    ]  # fmt: skip


def refuse_if_held(
    conn: Conn, settings: Settings, tenant_id: str | UUID, what: str, subject: str | None = None
) -> None:
    """HoldRefused naming the first hold that covers the data ``what`` would remove."""
    found = covering(conn, settings, tenant_id, subject)
    if found:
        h = found[0]
        raise HoldRefused(
            f"{what} refused: legal hold {h.id} on {h.scope} ({h.reason!r}, placed by {h.placed_by} on "
            f"{h.placed_at:%Y-%m-%d}); release it first with `callvault hold release {h.id}`"
        )
