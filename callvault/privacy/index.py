"""The archive's subject index: for each archived tenant-period, a Bloom filter of its subjects, so that
``callvault erase --subject`` reads only the objects that may hold that caller.

Written by the archive (after an archived period verifies, while its detached table still exists: one
``GROUP BY tenant_id`` over the subject index) to ``<table>/_subject_index/<period>/tenant_id=<T>.bloom``,
beside the manifests and outside the Hive paths readers scan. A filter answers "certainly not here" or
"maybe" (1 % false positives by design); an erase skips the periods that certainly do not hold the subject
and reads the others as before. A period without a filter (archived before a subject was set, or whose
filter could not be written) is simply read.

The filter holds no subject: each value is hashed with a keyed BLAKE2b whose key lives in the database
(``callvault.privacy_subject.bloom_key``), so the store alone cannot be tested against a list of phone
numbers. After an erase a filter may still answer "maybe" for the erased subject (Bloom filters cannot
forget); the next erase of it reads that period once more and finds nothing.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from collections.abc import Iterable
from datetime import datetime

from psycopg import sql

from callvault.archive import layout
from callvault.archive.store import Store
from callvault.config import META_SCHEMA, Settings
from callvault.db import Conn
from callvault.lifecycle import Interval
from callvault.privacy.subject import load

MAGIC = b"CVB1"
FALSE_POSITIVES = 0.01


def key(conn: Conn, settings: Settings) -> bytes | None:
    """The table's filter key (made on first use), or None when no subject is set."""
    if load(conn, settings) is None:
        return None
    table = sql.Identifier(META_SCHEMA, "privacy_subject")
    row = conn.execute(sql.SQL("SELECT bloom_key FROM {} WHERE parent_table = %s").format(table),
                       (settings.qualified,)).fetchone()  # fmt: skip
    if row is not None and row[0]:
        return bytes(row[0])
    made = os.urandom(32)
    conn.execute(
        sql.SQL("UPDATE {} SET bloom_key = coalesce(bloom_key, %s) WHERE parent_table = %s").format(table),
        (made, settings.qualified),
    )
    again = conn.execute(sql.SQL("SELECT bloom_key FROM {} WHERE parent_table = %s").format(table),
                         (settings.qualified,)).fetchone()  # fmt: skip
    return bytes(again[0]) if again and again[0] else None


def _positions(value: str, secret: bytes, m: int, k: int) -> list[int]:
    digest = hashlib.blake2b(value.encode(), key=secret, digest_size=16).digest()
    h1, h2 = struct.unpack("<QQ", digest)
    return [(h1 + i * h2) % m for i in range(k)]


def build(values: Iterable[str], secret: bytes, false_positives: float = FALSE_POSITIVES) -> bytes:
    """A Bloom filter of ``values`` (pure): ``MAGIC``, m bits (u32), k (u8), the bits."""
    distinct = {v for v in values if v is not None}
    n = max(len(distinct), 1)
    m = max(64, math.ceil(-n * math.log(false_positives) / math.log(2) ** 2))
    k = max(1, round(m / n * math.log(2)))
    bits = bytearray((m + 7) // 8)
    for v in distinct:
        for p in _positions(v, secret, m, k):
            bits[p >> 3] |= 1 << (p & 7)
    return MAGIC + struct.pack("<IB", m, k) + bytes(bits)


def may_contain(blob: bytes, value: str, secret: bytes) -> bool:
    """False when ``value`` is certainly not in the filter (pure); True for "maybe" or an unreadable filter."""
    if len(blob) < 9 or blob[:4] != MAGIC:
        return True
    m, k = struct.unpack("<IB", blob[4:9])
    bits = blob[9:]
    return all(bits[p >> 3] & (1 << (p & 7)) for p in _positions(value, secret, m, k))


def sidecar_key(settings: Settings, interval: Interval, start: datetime, tenant: str) -> str:
    tdir = layout.table_dir(settings.schema, settings.table)
    period = layout.manifest_key(tdir, interval, start).rsplit("/", 1)[1].removesuffix(".json")
    return f"{tdir}/_subject_index/{period}/tenant_id={tenant}.bloom"


def write_for_partition(
    conn: Conn, settings: Settings, store: Store, table: sql.Identifier, interval: Interval, start: datetime
) -> int:
    """One filter per tenant of the detached ``table`` (archived, verified, not yet dropped); returns how
    many were written (0 when no subject is set)."""
    secret = key(conn, settings)
    subject = load(conn, settings)
    if secret is None or subject is None:
        return 0
    rows = conn.execute(
        sql.SQL(
            "SELECT tenant_id::text, array_agg(DISTINCT {s}) FILTER (WHERE {s} IS NOT NULL) FROM {t} GROUP BY 1"
        ).format(s=subject.pg(), t=table)
    ).fetchall()
    for tenant, values in rows:
        store.put_bytes(sidecar_key(settings, interval, start, str(tenant)), build(values or [], secret))
    return len(rows)


def may_hold(store: Store, settings: Settings, secret: bytes | None, interval: Interval, start: datetime,
             tenant: str, value: str) -> bool:  # fmt: skip
    """Whether the tenant's archived period may hold ``value`` (True when there is no filter to ask)."""
    if secret is None:
        return True
    name = sidecar_key(settings, interval, start, tenant)
    if store.head(name) is None:
        return True
    return may_contain(store.get_bytes(name), value, secret)
