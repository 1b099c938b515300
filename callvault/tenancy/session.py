"""The tenant of a transaction: ``with tenant(conn, tenant_id):`` / ``async with atenant(conn, tenant_id):``
(generated twins, see :mod:`callvault.tenancy._async_session`) and the tenant id check."""

from callvault.tenancy._async_session import atenant
from callvault.tenancy._sync_session import tenant
from callvault.tenancy.ids import tenant_value, uuid_text

__all__ = ["atenant", "tenant", "tenant_value", "uuid_text"]
