"""Deterministic synthetic call logs for benchmarks: same seed, same rows, in every phase."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from callvault.ingest.call import Call

# Bytes of a row that are not transcript: two uuids, two timestamps, an int, small metadata and the
# tuple header. --row-bytes B gives transcripts of B - ROW_OVERHEAD bytes.
ROW_OVERHEAD = 150
TRANSCRIPT_POOL = 512  # distinct transcripts, reused: generation must not dominate the timings
WORDS = [
    "hello",
    "thanks",
    "calling",
    "appointment",
    "insurance",
    "claim",
    "refund",
    "order",
    "shipping",
    "clinic",
    "doctor",
    "tomorrow",
    "morning",
    "confirm",
    "address",
    "account",
    "balance",
    "payment",
    "transfer",
    "agent",
    "please",
    "yes",
    "no",
    "maybe",
    "schedule",
]


def transcripts(row_bytes: int, rng: random.Random) -> list[str]:
    size = max(0, row_bytes - ROW_OVERHEAD)
    pool = []
    for _ in range(TRANSCRIPT_POOL):
        words: list[str] = []
        length = 0
        while length < size:
            w = rng.choice(WORDS)
            words.append(w)
            length += len(w) + 1
        pool.append(" ".join(words)[:size])
    return pool


def calls(
    n: int, *, row_bytes: int = 1200, tenants: int = 100, seed: int = 42, span: timedelta = timedelta(days=3),
    now: datetime | None = None,
) -> Iterator[Call]:  # fmt: skip
    """n calls arriving in time order over ``span`` ending at ``now``, for ``tenants`` tenants."""
    rng = random.Random(seed)  # noqa: S311 - synthetic data
    tenant_ids = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(tenants)]
    pool = transcripts(row_bytes, rng)
    end = now or datetime.now(UTC)
    start = end - span
    step = span / max(n, 1)
    agents = [{"agent": f"agent-{i}", "lang": "en"} for i in range(16)]
    for i in range(n):
        started = start + step * i
        yield Call(
            tenant_id=tenant_ids[rng.randrange(tenants)],
            call_id=uuid.UUID(int=rng.getrandbits(128), version=4),
            started_at=started,
            ended_at=started + timedelta(seconds=60),
            duration_sec=60,
            transcript=pool[i % TRANSCRIPT_POOL],
            metadata=agents[i % 16],
        )
