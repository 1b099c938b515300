"""What ``callvault archive`` reports: each partition's result and the run's (``to_dict()`` is ``--json``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from callvault.errors import (
    ArchiveVerifyFailed,
)


@dataclass
class PartitionResult:
    """One partition in an archive run: the journal step it started at and reached (``dropped`` when
    done), rows and exported bytes, time taken, and on failure the message and exit code."""

    partition: str
    start: datetime
    end: datetime
    step_before: str
    step_after: str
    rows: int | None = None
    bytes: int = 0
    seconds: float = 0.0
    error: str | None = None
    exit_code: int = 0

    def to_dict(self) -> dict[str, object]:
        """The result as JSON-ready values (one entry of ``callvault archive --json``)."""
        return {
            "partition": self.partition, "from": self.start.isoformat(), "to": self.end.isoformat(),
            "step_before": self.step_before, "step_after": self.step_after, "rows": self.rows,
            "bytes": self.bytes, "seconds": round(self.seconds, 3), "error": self.error,
        }  # fmt: skip


@dataclass
class ArchiveReport:
    """What one archive run did to each partition past retention (with ``dry_run``: what it would do)."""

    table: str
    store: str
    fmt: str
    dry_run: bool
    partitions: list[PartitionResult] = field(default_factory=list)

    @property
    def failed(self) -> list[PartitionResult]:
        """The partitions that stopped with an error (kept in the database; the next run resumes them)."""
        return [p for p in self.partitions if p.error]

    def counts(self) -> dict[str, object]:
        """What the job history keeps of the run: partitions seen, archived (dropped after verify),
        failed and failed at verify; rows and exported bytes of the archived ones."""
        done = [p for p in self.partitions if p.step_after == "dropped" and not p.error]
        return {
            "partitions": len(self.partitions), "archived": len(done), "failed": len(self.failed),
            "verify_failed": sum(1 for p in self.failed if p.exit_code == ArchiveVerifyFailed.exit_code),
            "rows": sum(p.rows or 0 for p in done), "bytes": sum(p.bytes for p in done),
        }  # fmt: skip

    def to_dict(self) -> dict[str, object]:
        """The report as JSON-ready values (``callvault archive --json``)."""
        return {
            "table": self.table, "store": self.store, "format": self.fmt, "dry_run": self.dry_run,
            "partitions": [p.to_dict() for p in self.partitions],
        }  # fmt: skip
