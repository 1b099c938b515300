"""Tenant isolation: roles, row-level security on the parent and every partition, the tenant of a
transaction, the untrusted write path, and the audit that proves it (see docs/tenancy.md)."""

from callvault.tenancy._async_session import atenant
from callvault.tenancy._sync_session import tenant
from callvault.tenancy.audit import AuditReport, Finding, audit
from callvault.tenancy.ids import tenant_value
from callvault.tenancy.policy import POLICY_NAME, TENANT_SETTING
from callvault.tenancy.repair import SecureResult, secure
from callvault.tenancy.writer import TenantWriter, TenantWriteResult

__all__ = [
    "POLICY_NAME", "TENANT_SETTING", "AuditReport", "Finding", "SecureResult", "TenantWriteResult", "TenantWriter",
    "atenant", "audit", "secure", "tenant", "tenant_value",
]  # fmt: skip
