"""One error base for the library, small specific subclasses.

Library code raises these; only the CLI prints them. Every message names the input
that was wrong and what to do about it. ``exit_code`` is what the CLI exits with.
"""

from __future__ import annotations


class CallvaultError(Exception):
    """Base of every error callvault raises on purpose."""

    exit_code = 1


class InvalidSetting(CallvaultError):
    """A setting or argument has a value callvault cannot use (bad interval, retention, name...)."""

    exit_code = 2


class DatabaseUnavailable(CallvaultError):
    """The database cannot be reached with the given DSN."""

    exit_code = 69  # EX_UNAVAILABLE


class AuthenticationFailed(DatabaseUnavailable):
    """The server refused the credentials (wrong password, unknown user, pg_hba)."""

    exit_code = 77  # EX_NOPERM


class PermissionDenied(CallvaultError):
    """The connected role may not do this (SQLSTATE 42501): the message names the role to use."""

    exit_code = 77  # EX_NOPERM


class ExtensionMissing(CallvaultError):
    """A required Postgres extension (pg_partman, pg_cron) is not installed on the server."""

    exit_code = 69


class SchemaMismatch(CallvaultError):
    """The target table exists with a shape callvault did not create; nothing was changed."""

    exit_code = 65  # EX_DATAERR


class NotInitialised(CallvaultError):
    """The table is not managed by callvault/pg_partman yet: run ``callvault init`` first."""

    exit_code = 66


class AlreadyRunning(CallvaultError):
    """Another maintenance run holds the lock for this table."""

    exit_code = 75  # EX_TEMPFAIL: try again later


class Blocked(CallvaultError):
    """Another session held a lock past the lock budget on every retry; nothing half-done was kept."""

    exit_code = 75  # EX_TEMPFAIL: the next run retries


class NotPrimary(DatabaseUnavailable):
    """The DSN reaches a standby (a server in recovery) where a primary is needed."""

    exit_code = 69  # EX_UNAVAILABLE


class EmbeddedError(CallvaultError):
    """The embedded Postgres cluster could not be created, started or stopped."""

    exit_code = 70  # EX_SOFTWARE


class Unhealthy(CallvaultError):
    """A health check failed; the message is the one-line reason."""

    exit_code = 3


class WriterError(CallvaultError):
    """The writer could not commit some rows; they are kept in ``unwritten`` (never dropped)."""

    def __init__(self, message: str, unwritten: list[object] | None = None) -> None:
        super().__init__(message)
        self.unwritten = unwritten or []


class StoreUnavailable(CallvaultError):
    """The archive store (directory or S3 bucket) cannot be reached, read or written."""

    exit_code = 69  # EX_UNAVAILABLE: nothing was dropped; run again when the store is back


class ArchiveVerifyFailed(CallvaultError):
    """An archived object read back does not match the database: the partition is kept, not dropped."""

    exit_code = 65  # EX_DATAERR


class ArchivePruned(CallvaultError):
    """What was asked for lies in an archived period whose objects for that tenant were deleted by
    archive retention (``callvault archive prune``): the calls are gone, not merely not found."""

    exit_code = 1


class HoldRefused(CallvaultError):
    """A legal hold covers data the command would remove (``callvault hold list`` shows it)."""

    exit_code = 77  # EX_NOPERM: release the hold first (`callvault hold release ID`)
