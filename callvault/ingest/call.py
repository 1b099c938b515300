"""A call log as an application hands it over: the :class:`Call` value the writers take (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID


@dataclass(frozen=True, slots=True)
class Call:
    """One call log as an application hands it over (the seed's fields). Strings are accepted for UUIDs and
    ISO 8601 timestamps."""

    tenant_id: UUID | str
    call_id: UUID | str
    started_at: datetime | str
    ended_at: datetime | str | None = None
    duration_sec: int | None = None
    transcript: str | None = None
    metadata: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] | None = None  # the table's own columns (``callvault columns list``), by name
