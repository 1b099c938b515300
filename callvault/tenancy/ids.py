"""Tenant and call ids: canonical UUID text, or one error naming the bad value (pure)."""

from __future__ import annotations

from uuid import UUID

from callvault.errors import InvalidSetting


def uuid_text(value: UUID | str, what: str, example: str) -> str:
    """``value`` as canonical UUID text, or InvalidSetting naming ``what`` and the bad value (pure)."""
    if isinstance(value, UUID):
        return str(value)
    try:
        return str(UUID(str(value)))
    except (ValueError, TypeError, AttributeError):
        raise InvalidSetting(f"{what} id {value!r} is not a UUID; pass the {what}'s UUID ({example})") from None


def tenant_value(tenant_id: UUID | str) -> str:
    """The tenant as the canonical UUID text, or InvalidSetting naming the bad value (pure)."""
    return uuid_text(tenant_id, "tenant", "e.g. uuid.UUID('...')")
