"""Read an archive back and check it against its manifest: object size and SHA-256, and each tenant's
content fingerprint computed by DuckDB over the downloaded files (independently of Postgres)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from callvault import columns
from callvault.archive import layout
from callvault.archive.faults import fault_point
from callvault.archive.layout import Fingerprint, Manifest, TenantEntry
from callvault.archive.store import Store, sha256_file
from callvault.errors import ArchiveVerifyFailed


def duck_fingerprint(paths: list[Path], fmt: str, con: Any = None) -> Fingerprint:
    """The content fingerprint of archived files, computed by DuckDB (independently of Postgres)."""
    import duckdb

    files = [str(p) for p in paths]
    if fmt == "parquet":
        source = "read_parquet($files, hive_partitioning = false)"
    else:
        cols = columns.duck_csv_columns()
        source = f"read_csv($files, header = true, columns = {cols}, allow_quoted_nulls = false)"
    own = con is None
    con = con or duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        row = con.execute(layout.DUCK_FINGERPRINT.format(source=source), {"files": files}).fetchone()
    finally:
        if own:
            con.close()
    assert row is not None
    return Fingerprint(int(row[0]), str(row[1]), row[2], row[3])


def verify_manifest(store: Store, manifest: Manifest, key: str, workdir: Path) -> None:
    """Read every object of ``manifest`` back from ``store`` and check it; ArchiveVerifyFailed otherwise."""
    import duckdb

    stored = store.get_bytes(key)
    if Manifest.from_json(stored).to_json() != manifest.to_json():
        raise ArchiveVerifyFailed(f"manifest {key} read back from {store.url} differs from the one written")
    with duckdb.connect() as con:  # one DuckDB for every tenant: connecting costs ~10 ms
        for tenant, entry in sorted(manifest.tenants.items()):
            if not entry.pruned_at:
                _verify_tenant(store, manifest, tenant, entry, workdir, con)


def _verify_tenant(store: Store, manifest: Manifest, tenant: str, entry: TenantEntry, workdir: Path, con: Any) -> None:
    local = []
    for obj in entry.objects:
        info = store.head(obj.key)
        if info is None:
            raise ArchiveVerifyFailed(f"{obj.key} is missing from {store.url}")
        if info.size != obj.size:
            raise ArchiveVerifyFailed(
                f"{obj.key} in {store.url} is {info.size} bytes, expected {obj.size} (truncated?)"
            )
        dest = workdir / obj.key.replace("/", "_")
        store.get_file(obj.key, dest)
        if sha256_file(dest) != obj.sha256 or (info.sha256 is not None and info.sha256 != obj.sha256):
            raise ArchiveVerifyFailed(f"{obj.key} in {store.url} does not match its SHA-256 (corrupted)")
        local.append(dest)
        fault_point("verify-first-object")  # killed half-way through the read-back
    try:
        got = duck_fingerprint(local, manifest.fmt, con)
    except Exception as exc:  # a file that hashes right but does not parse is still not an archive
        raise ArchiveVerifyFailed(f"{tenant}'s objects in {store.url} cannot be read back: {exc}") from exc
    if got != entry.fingerprint:
        raise ArchiveVerifyFailed(
            f"tenant {tenant} of {manifest.partition}: archive has {got.rows} rows (fingerprint {got.digest}), "
            f"the database {entry.fingerprint.rows} ({entry.fingerprint.digest})"
        )
    for dest in local:
        dest.unlink(missing_ok=True)
