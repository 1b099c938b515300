"""Tenant and call ids: canonical UUID text, or one error naming the bad value (pure)."""

from __future__ import annotations

from uuid import UUID

from callvault.errors import InvalidSetting


def as_uuid(value: object, name: str, fix: str) -> str:
    """The one UUID parser: ``value`` (a UUID or its text, surrounding blanks ignored) as canonical UUID
    text, or InvalidSetting "``name`` ``value`` is not a UUID``fix``" (pure). Every id callvault takes
    -- a tenant, a call, a CLI option -- goes through here."""
    if isinstance(value, UUID):
        return str(value)
    try:
        return str(UUID(str(value).strip()))
    except (ValueError, TypeError, AttributeError):
        raise InvalidSetting(f"{name} {value!r} is not a UUID{fix}") from None


def uuid_text(value: UUID | str, what: str, example: str) -> str:
    """``value`` as canonical UUID text, or InvalidSetting naming ``what`` and the bad value (pure)."""
    return as_uuid(value, f"{what} id", f"; pass the {what}'s UUID ({example})")


def tenant_value(tenant_id: UUID | str) -> str:
    """The tenant as the canonical UUID text, or InvalidSetting naming the bad value (pure)."""
    return uuid_text(tenant_id, "tenant", "e.g. uuid.UUID('...')")
