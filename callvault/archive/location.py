"""Where archives and the spool live: the configured store, the embedded default, the spool directory."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from callvault.archive.store import Store, open_store
from callvault.config import Settings
from callvault.errors import InvalidSetting

ARCHIVE_URL_ENV = "CALLVAULT_ARCHIVE_URL"
SPOOL_ENV = "CALLVAULT_ARCHIVE_SPOOL"


def default_store_url(settings: Settings) -> str:
    """The configured store (``archive_url``: flag, ``$CALLVAULT_ARCHIVE_URL`` or callvault.toml); with
    the embedded database, a directory in the callvault home."""
    url = settings.archive_url or os.environ.get(ARCHIVE_URL_ENV)
    if url:
        return url
    if settings.dsn is None:
        from callvault.embedded import default_home

        return (default_home() / "archive").resolve().as_uri()
    raise InvalidSetting(
        "no archive store configured: pass --to s3://bucket/prefix (or file:///path), or set CALLVAULT_ARCHIVE_URL"
    )


def read_store(settings: Settings, store_url: str | None = None) -> Store:
    """The store to read from (list, query, restore, prune). One named explicitly (``--to``, the
    environment, callvault.toml) must exist: a typo is an error, never an empty archive."""
    store = open_store(store_url or default_store_url(settings))
    if store_url or settings.archive_url or os.environ.get(ARCHIVE_URL_ENV):
        store.require()
    return store


def default_spool() -> Path:
    env = os.environ.get(SPOOL_ENV)
    return Path(env) if env else Path(tempfile.gettempdir()) / f"callvault-spool-{os.getuid()}"


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
