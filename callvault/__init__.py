"""callvault: AI voice-agent call logs in partitioned Postgres, fast for years."""

from callvault.ingest import AsyncWriter, Call, FlushResult, Writer, log_call

__all__ = ["AsyncWriter", "Call", "FlushResult", "Writer", "log_call"]
