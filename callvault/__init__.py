"""callvault: AI voice-agent call logs in partitioned Postgres, fast for years.

The names most applications need are here; the rest is one import away:

* writing: :class:`Writer`, :class:`AsyncWriter`, :func:`log_call`, :class:`Call` (``callvault.ingest``);
* reading as one tenant: :class:`Reader`, :class:`AsyncReader`, :class:`Page` (``callvault.query``),
  :func:`tenant` / :func:`atenant` for your own statements (``callvault.tenancy``);
* configuration: :class:`Settings` and :func:`from_env` (``callvault.config``, the one loader);
* operations (what the CLI runs): ``callvault.commands``; errors: ``callvault.errors``.
"""

from callvault.config import Settings, from_env
from callvault.ingest import AsyncWriter, Call, FlushResult, QuarantineEvent, Writer, log_call
from callvault.query import AsyncReader, CallRecord, CallSummary, Page, Reader
from callvault.tenancy import atenant, tenant

__all__ = [
    "AsyncReader", "AsyncWriter", "Call", "CallRecord", "CallSummary", "FlushResult", "Page", "QuarantineEvent",
    "Reader", "Settings", "Writer", "atenant", "from_env", "log_call", "tenant",
]  # fmt: skip
