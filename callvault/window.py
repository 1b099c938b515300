"""A time window ``[since, until)``: the one check every read and export of calls makes (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from callvault.errors import InvalidSetting


class WindowRefused(InvalidSetting):
    """A read without a bounded, reasonable time window (it would scan every partition)."""


def aware_window(since: object, until: object) -> tuple[datetime, datetime]:
    """``(since, until)`` as UTC datetimes, or WindowRefused (an InvalidSetting, exit code 2) naming the
    bound that is not a timezone-aware datetime, or the empty window."""
    for name, ts in (("since", since), ("until", until)):
        if not isinstance(ts, datetime) or ts.tzinfo is None:
            raise WindowRefused(f"{name}={ts!r} must be a timezone-aware datetime, e.g. datetime.now(UTC)")
    assert isinstance(since, datetime) and isinstance(until, datetime)
    lo, hi = since.astimezone(UTC), until.astimezone(UTC)
    if lo >= hi:
        raise WindowRefused(f"empty window: since {lo.isoformat()} is not before until {hi.isoformat()}")
    return lo, hi


def check_window(since: datetime | None, until: datetime | None, max_window: timedelta) -> tuple[datetime, datetime]:
    """A hot read's window as UTC datetimes (``until`` default: now), or WindowRefused naming what is
    wrong and the fix: unbounded, naive, empty, or wider than ``max_window``."""
    if since is None:
        raise WindowRefused(
            "an unbounded window would scan every partition: pass since= (and until=), e.g. the last 7 days"
        )
    since, until = aware_window(since, until or datetime.now(UTC))
    if until - since > max_window:
        raise WindowRefused(
            f"window {since:%Y-%m-%d}..{until:%Y-%m-%d} ({(until - since).days} days) is wider than "
            f"{max_window.days} days (the hot retention): split it, or query the archive for older calls"
        )
    return since, until
