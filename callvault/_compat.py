"""Deprecated keyword names, kept for one release after the API took the CLI's vocabulary
(``tenant_id``, ``since``/``until``, ``format``, ``store_url``, ``period``; see README "Vocabulary")."""

from __future__ import annotations

import warnings
from typing import TypeVar

from callvault.errors import InvalidSetting

T = TypeVar("T")


def renamed(func: str, old: str, old_value: T | None, new: str, new_value: T | None) -> T | None:
    """``new_value``, or ``old_value`` with a DeprecationWarning when only the old keyword was given."""
    if old_value is None:
        return new_value
    warnings.warn(
        f"{func}({old}=...) is deprecated: use {new}= (the old name is removed in the next release)",
        DeprecationWarning,
        stacklevel=3,
    )
    if new_value is not None and new_value != old_value:
        raise InvalidSetting(f"{func}: pass {new}= only, not both {new}= and the deprecated {old}=")
    return old_value
