"""Read an archive back and check it against its manifest: object size and SHA-256, and each tenant's
content fingerprint computed by DuckDB over the downloaded files (independently of Postgres)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from callvault import columns
from callvault.archive import layout
from callvault.archive.faults import fault_point
from callvault.archive.layout import Fingerprint, Manifest, TenantEntry
from callvault.archive.store import Store, sha256_file
from callvault.errors import ArchiveVerifyFailed

READ_THREADS = 2


def duck_fingerprints(
    groups: dict[str, list[Path]], fmt: str, con: Any, algo: str = layout.MD5, *, where: str = "TRUE",
    params: dict[str, Any] | None = None,
) -> dict[str, Fingerprint]:  # fmt: skip
    """The ``algo`` fingerprint of each group of files (a tenant's objects), in ONE DuckDB query
    (parallel, ~10 ms of overhead in total rather than per tenant); ``where`` (a DuckDB predicate with
    named ``params``) keeps only some rows (an erasure's expected result)."""
    by_file = {str(p): g for g, paths in groups.items() for p in paths}
    if not by_file:
        return {}
    if fmt == "parquet":
        reader = "read_parquet($files, hive_partitioning = false, filename = true)"
    else:
        cols = columns.duck_csv_columns()
        reader = f"read_csv($files, header = true, columns = {cols}, allow_quoted_nulls = false, filename = true)"
    con.execute("SET TimeZone = 'UTC'")
    con.execute("CREATE OR REPLACE TEMP TABLE cv_groups (filename VARCHAR, grp VARCHAR)")
    con.executemany("INSERT INTO cv_groups VALUES (?, ?)", list(by_file.items()))
    source = f"(SELECT r.*, g.grp FROM {reader} r JOIN cv_groups g USING (filename) WHERE {where})"
    if algo == layout.MD5:
        rows = con.execute(
            layout.DUCK_FINGERPRINT_BY.format(source=source), {"files": list(by_file), **(params or {})}
        ).fetchall()
        return {str(g): Fingerprint(int(n), str(d), lo, hi) for g, n, d, lo, hi in rows}
    rows = con.execute(
        layout.DUCK_SUMS_HASH_BY.format(source=source), {"files": list(by_file), **(params or {})}
    ).fetchall()
    return {str(r[0]): Fingerprint.from_check_row((r[1], *r[3:]), digest=str(r[2])) for r in rows}


def verify_manifest(store: Store, manifest: Manifest, key: str, workdir: Path) -> None:
    """Read every object of ``manifest`` back from ``store`` and check it; ArchiveVerifyFailed otherwise.

    Each object's size and SHA-256 (as read back), then every tenant's content fingerprint, computed by
    DuckDB over the objects (one query per fingerprint version), against the one recorded at export.
    Objects of a local store are read where they are; others are downloaded to ``workdir`` first."""
    import duckdb

    stored = store.get_bytes(key)
    if Manifest.from_json(stored).to_json() != manifest.to_json():
        raise ArchiveVerifyFailed(f"manifest {key} read back from {store.url} differs from the one written")
    live = {t: e for t, e in sorted(manifest.tenants.items()) if not e.pruned_at}
    fetched: list[Path] = []
    # objects are read back (hashed, or downloaded and hashed) two at a time: hashlib and the S3 client
    # release the GIL
    with ThreadPoolExecutor(READ_THREADS) as pool:
        jobs = {t: pool.submit(_fetch, store, e, workdir, fetched) for t, e in live.items()}
        local = {t: job.result() for t, job in jobs.items()}
    got: dict[str, Fingerprint] = {}
    with duckdb.connect() as con:
        for algo in sorted({e.fingerprint.algo for e in live.values()}):
            group = {t: paths for t, paths in local.items() if live[t].fingerprint.algo == algo}
            try:
                got.update(duck_fingerprints(group, manifest.fmt, con, algo))
            except Exception as exc:  # a file that hashes right but does not parse is still not an archive
                raise ArchiveVerifyFailed(
                    f"objects of {manifest.partition} in {store.url} cannot be read back: {exc}"
                ) from exc
    for tenant, entry in live.items():
        fp = got.get(tenant, Fingerprint(0, "0", None, None, entry.fingerprint.algo))
        if fp != entry.fingerprint:
            raise ArchiveVerifyFailed(
                f"tenant {tenant} of {manifest.partition}: archive has {fp.rows} rows (fingerprint {fp.digest}), "
                f"the database {entry.fingerprint.rows} ({entry.fingerprint.digest})"
            )
    for dest in fetched:
        dest.unlink(missing_ok=True)


def _fetch(store: Store, entry: TenantEntry, workdir: Path, fetched: list[Path]) -> list[Path]:
    """Each object of ``entry`` as a local file whose size and SHA-256 were checked: the object
    itself in a local store, else a download into ``workdir`` (appended to ``fetched``)."""
    local = []
    for obj in entry.objects:
        info = store.head(obj.key)
        if info is None:
            raise ArchiveVerifyFailed(f"{obj.key} is missing from {store.url}")
        if info.size != obj.size:
            raise ArchiveVerifyFailed(
                f"{obj.key} in {store.url} is {info.size} bytes, expected {obj.size} (truncated?)"
            )
        dest = store.local_path(obj.key)
        if dest is None:
            dest = workdir / obj.key.replace("/", "_")
            store.get_file(obj.key, dest)
            fetched.append(dest)
            if sha256_file(dest) != obj.sha256 or (info.sha256 is not None and info.sha256 != obj.sha256):
                raise ArchiveVerifyFailed(f"{obj.key} in {store.url} does not match its SHA-256 (corrupted)")
        elif info.sha256 != obj.sha256:  # a local head() hashes the file itself
            raise ArchiveVerifyFailed(f"{obj.key} in {store.url} does not match its SHA-256 (corrupted)")
        local.append(dest)
        fault_point("verify-first-object")  # killed half-way through the read-back
    return local
