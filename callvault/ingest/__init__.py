"""Ingest: validate, batch and COPY call logs; quarantine what cannot land."""

from callvault.ingest._batch import FlushResult, QuarantineEvent
from callvault.ingest.aio import AsyncWriter
from callvault.ingest.call import Call
from callvault.ingest.default import configure, flush, log_call
from callvault.ingest.validate import Rejected, Rules
from callvault.ingest.writer import Writer

__all__ = [
    "AsyncWriter",
    "Call",
    "FlushResult",
    "QuarantineEvent",
    "Rejected",
    "Rules",
    "Writer",
    "configure",
    "flush",
    "log_call",
]
