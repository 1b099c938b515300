"""Where archives and the spool live: the configured store, the embedded default, the spool directory."""

from __future__ import annotations

import os
import tempfile
from datetime import datetime
from pathlib import Path

import psycopg
from psycopg import sql

from callvault.archive.store import LocalStore, Store, open_store
from callvault.config import META_SCHEMA, Settings, default_home
from callvault.db import connect
from callvault.errors import CallvaultError, InvalidSetting

ARCHIVE_URL_ENV = "CALLVAULT_ARCHIVE_URL"
SPOOL_ENV = "CALLVAULT_ARCHIVE_SPOOL"


def default_store_url(settings: Settings) -> str:
    """The configured store (``archive_url``: flag, ``$CALLVAULT_ARCHIVE_URL`` or callvault.toml); with
    the embedded database, a directory in the callvault home."""
    url = settings.archive_url
    if url:
        return url
    if settings.dsn is None:
        return (default_home() / "archive").resolve().as_uri()
    raise InvalidSetting(
        "no archive store configured: pass --to s3://bucket/prefix (or file:///path), or set CALLVAULT_ARCHIVE_URL"
    )


def recorded_stores(settings: Settings, period: datetime | None = None) -> dict[str, int] | None:
    """The stores the archive journal says this table's periods went to (``period``: that one only),
    with how many periods each; None when the journal cannot be read (no database, no rights)."""
    query = sql.SQL(
        "SELECT store_url, count(*) FROM {} WHERE parent_table = %s AND (%s::timestamptz IS NULL OR range_start = %s) "
        "AND step IN ('uploaded', 'verified', 'dropped') GROUP BY store_url ORDER BY max(updated_at) DESC"
    ).format(sql.Identifier(META_SCHEMA, "archive_journal"))
    try:
        with connect(settings, autocommit=True) as conn:
            exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{META_SCHEMA}.archive_journal",)).fetchone()
            if not exists or not exists[0]:
                return {}
            rows = conn.execute(query, (settings.qualified, period, period)).fetchall()
    except (CallvaultError, psycopg.Error, OSError):  # unreachable, or a role that may not read the journal
        return None
    return {str(url): int(n) for url, n in rows}


def _periods(recorded: dict[str, int]) -> str:
    """``url (n periods), ...`` for messages."""
    return ", ".join(f"{url} ({n} period{'s' if n != 1 else ''})" for url, n in recorded.items())


def read_store_url(settings: Settings, store_url: str | None = None, period: datetime | None = None) -> str:
    """The store a read (list, query, calls, restore, prune) uses: the one named (``--to``), else the one
    the archive journal recorded for this table (``period``: for that period), else the configured one,
    else the embedded default.

    :raises InvalidSetting: periods went to several stores and none was named (the message names them).
    """
    if store_url:
        return store_url
    recorded = recorded_stores(settings, period) or {}
    if not recorded and period is not None:  # a period never archived: look where the others went
        recorded = recorded_stores(settings) or {}
    if len(recorded) == 1:
        return next(iter(recorded))
    if len(recorded) > 1:
        raise InvalidSetting(
            f"the archive of {settings.qualified} is split across stores: {_periods(recorded)}; name the one to "
            "read with --to URL (store_url=)"
        )
    return default_store_url(settings)


def read_store(settings: Settings, store_url: str | None = None, period: datetime | None = None) -> Store:
    """The store to read from (see :func:`read_store_url`). It must exist, whether it was named, recorded
    or is the default: a typo, or a store that is gone, is an error, never an empty archive.

    :raises StoreUnavailable: the store does not exist or cannot be reached (exit 69)."""
    store = open_store(read_store_url(settings, store_url, period))
    store.require()
    return store


def require_write_store(settings: Settings, store: Store, *, explicit: bool, new_store: bool) -> None:
    """Refuse to start a new store silently: a store other than the one earlier periods of this table
    went to, or a directory that does not exist yet, needs ``new_store`` (``--new-store``). The embedded
    default store (in callvault's own home, never typed) is created when needed.

    :raises InvalidSetting: the store is new and ``new_store`` is false (exit 2)."""
    if new_store:
        return
    recorded = recorded_stores(settings) or {}
    others = {url: n for url, n in recorded.items() if url != store.url}
    if others and store.url not in recorded:
        raise InvalidSetting(
            f"archive to {store.url}: earlier periods of {settings.qualified} went to {_periods(others)}; archiving "
            "here would split the archive across stores. Archive there (--to it), or pass --new-store to start "
            f"{store.url} on purpose"
        )
    is_default = not explicit and not settings.archive_url  # the embedded home's, never typed
    if isinstance(store, LocalStore) and not store.root.is_dir() and not is_default:
        raise InvalidSetting(
            f"archive directory {store.root} does not exist: check the URL for a typo; to start a new archive "
            "there, create the directory or pass --new-store"
        )


def default_spool(settings: Settings | None = None) -> Path:
    """The configured spool (``spool``: flag, ``$CALLVAULT_ARCHIVE_SPOOL`` or callvault.toml), else one
    per user in the temporary directory."""
    if settings is not None and settings.spool:
        return Path(settings.spool)
    return Path(tempfile.gettempdir()) / f"callvault-spool-{os.getuid()}"


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def require_free_space(spool: Path, need: int, what: str, then: str) -> None:
    """Refuse up front (:class:`StoreUnavailable`, exit 69) when ``spool``'s filesystem has less than
    ``need`` bytes free for ``what``; ``then`` says what was (not) changed."""
    import shutil

    from callvault.errors import StoreUnavailable

    free = shutil.disk_usage(spool).free
    if need > free:
        raise StoreUnavailable(
            f"{what} needs up to {_mb(need)} in the spool directory {spool}, which has {_mb(free)} free: free "
            f"space there or point {SPOOL_ENV} at a larger disk; {then}"
        )
