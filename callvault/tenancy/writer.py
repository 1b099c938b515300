"""The untrusted, tenant-scoped write path: stage, then ``INSERT ... SELECT`` through the parent.

Postgres refuses ``COPY FROM`` into a table row-level security applies to, so a writer that is
bound by the tenant policy COPYs into a temporary staging table (``ON COMMIT DELETE ROWS``: nothing
survives the transaction) and inserts from it into the parent, where the policy's WITH CHECK refuses
any row of another tenant. Rows are validated first; a row for another tenant, or one that fails
validation, comes back in ``rejected`` with the reason while the good rows land. Nothing is written
to callvault's shared quarantine table: an untrusted writer touches no shared state, and the caller
keeps what was refused.

Use it with the ``tenant_writer`` role (``callvault init --roles``), which may INSERT and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from callvault import catalog
from callvault.config import Settings, from_env
from callvault.db import Conn
from callvault.ingest import _batch as b
from callvault.ingest._sync_io import merge_rows
from callvault.ingest.call import Call
from callvault.ingest.validate import DEFAULT_MAX_TRANSCRIPT_BYTES, LiveRange, Rejected, Row, Rules, validate
from callvault.tenancy._sync_session import tenant
from callvault.tenancy.ids import tenant_value


@dataclass
class TenantWriteResult:
    """Counts of one :meth:`TenantWriter.write`: written, duplicates (a retry) and quarantined."""

    written: int = 0
    duplicates: int = 0  # already stored (same tenant, call id, started_at): a retry, skipped
    rejected: list[Rejected] = field(default_factory=list)


class TenantWriter:
    """Write one tenant's calls through row-level security (one transaction per :meth:`write`)."""

    def __init__(
        self, conn: Conn, tenant_id: UUID | str, settings: Settings | None = None, *,
        max_transcript_bytes: int = DEFAULT_MAX_TRANSCRIPT_BYTES, assume_utc: bool = False,
    ) -> None:  # fmt: skip
        self.conn = conn
        self.tenant = UUID(tenant_value(tenant_id))
        self.settings = settings or from_env()
        self._limits = (max_transcript_bytes, assume_utc)

    def write(self, calls: Iterable[Call | Mapping[str, Any]]) -> TenantWriteResult:
        """Insert ``calls`` as this writer's tenant, in one transaction, idempotently; a call of another
        tenant or an invalid one is quarantined, never written."""
        result = TenantWriteResult()
        with tenant(self.conn, self.tenant):
            shape = catalog.table_shape(self.conn, self.settings)  # the table's own columns too
            rules = Rules(*self._limits, LiveRange(catalog.partition_bounds(self.conn, self.settings)), shape.extras)
            rows: list[Row] = []
            for call in calls:
                out = validate(call, rules)
                if isinstance(out, Rejected):
                    result.rejected.append(out)
                elif out[0] != self.tenant:
                    reason = f"tenant_id {out[0]} is not this writer's tenant {self.tenant}"
                    result.rejected.append(Rejected(call, reason))  # the input, unchanged
                else:
                    rows.append(out)
            if rows:
                b.prepare_connection(self.conn)  # metadata is pre-encoded JSON bytes
                self.conn.execute(b.stage_ddl(shape))
                written, refused = merge_rows(self.conn, self.settings, rows, shape)
                result.written = written
                result.duplicates = len(rows) - written - len(refused)
                result.rejected += refused
        return result
