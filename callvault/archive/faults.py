"""Test hook: die like ``kill -9`` at a named point of the archive (``CALLVAULT_FAULT_AFTER``)."""

from __future__ import annotations

import os
import signal

from callvault import config

FAULT_ENV = "CALLVAULT_FAULT_AFTER"  # test hook: SIGKILL this process right after the named step
FAULT_POINTS = ("detach", "export", "upload-first-object", "upload", "verify-first-object", "verify", "drop")


def fault_point(name: str) -> None:
    """Die like ``kill -9`` right after ``name`` when the test hook asks for it."""
    if config.knob(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
